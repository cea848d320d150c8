export const WHATSAPP_CONFIG = {
  ORCHESTRATOR_BASE_URL: process.env.WHATSAPP_ORCHESTRATOR_URL || 'http://localhost:3000',
  DISCONNECT_SESSION_ENDPOINT: '/sessions',
  // 30 s as documented. WHATSAPP_ORCHESTRATOR_TIMEOUT_MS is a hook of this stand-in app
  // only (the parity test shortens it); the legacy app had the constant.
  REQUEST_TIMEOUT: Number(process.env.WHATSAPP_ORCHESTRATOR_TIMEOUT_MS) || 30000,
};
