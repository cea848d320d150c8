// Cliente del navegador para las rutas /api/whatsapp_sessions.

export interface WhatsappSession {
  id: number;
  session_id: string | null;
  status: string;
  phone_number: string | null;
  last_seen: string | null;
  auth_folder_path: string | null;
  whatsapp_user_id: string | null;
  created_at: string;
  updated_at: string;
}

export interface ApiResponse<T> {
  success: boolean;
  message?: string;
  warning?: string;
  error?: string;
  details?: string;
  data?: T;
}

export interface DisconnectData {
  session_id: string;
  orchestrator_disconnect: unknown;
  updated_session: WhatsappSession | null;
}

async function getSessions(): Promise<ApiResponse<WhatsappSession[]>> {
  const response = await fetch('/api/whatsapp_sessions', {
    method: 'GET',
    headers: { Accept: 'application/json' },
    cache: 'no-store',
  });
  return response.json();
}

export async function disconnectSession(sessionId: number): Promise<ApiResponse<DisconnectData>> {
  const response = await fetch(`/api/whatsapp_sessions/${sessionId}/disconnect`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
  });
  return response.json();
}

export const whatsappSessionsServices = {
  getSessions,
  disconnectSession,
};
