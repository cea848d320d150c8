'use client';

import { useCallback, useEffect, useState } from 'react';
import { whatsappSessionsServices, type WhatsappSession } from '@/services/whatsappSessionsServices';

type Result = { kind: 'ok' | 'error'; text: string };

export default function SessionsTable() {
  const [sessions, setSessions] = useState<WhatsappSession[]>([]);
  const [loaded, setLoaded] = useState(false);
  const [busyId, setBusyId] = useState<number | null>(null);
  const [result, setResult] = useState<Result | null>(null);

  const refresh = useCallback(async () => {
    try {
      const response = await whatsappSessionsServices.getSessions();
      if (response.success && response.data) {
        setSessions(response.data);
      } else {
        setResult({ kind: 'error', text: response.error ?? 'No se pudieron cargar las sesiones' });
      }
    } catch (error) {
      setResult({ kind: 'error', text: `Error inesperado: ${String(error)}` });
    } finally {
      setLoaded(true);
    }
  }, []);

  useEffect(() => {
    void refresh();
  }, [refresh]);

  // Desconectar una sesión (como en docs/disconnect-endpoint.md, "Uso desde el Frontend").
  const disconnectSession = async (sessionId: number) => {
    setBusyId(sessionId);
    try {
      const response = await whatsappSessionsServices.disconnectSession(sessionId);

      if (response.success) {
        console.log('Sesión desconectada:', response.data);
        setResult({ kind: 'ok', text: response.warning ?? response.message ?? 'OK' });
      } else {
        console.error('Error al desconectar:', response.error);
        const details = response.details ? ` (${response.details})` : '';
        setResult({ kind: 'error', text: `${response.error}${details}` });
      }
    } catch (error) {
      console.error('Error inesperado:', error);
      setResult({ kind: 'error', text: `Error inesperado: ${String(error)}` });
    } finally {
      setBusyId(null);
      // Actualizar UI
      await refresh();
    }
  };

  return (
    <section>
      <table id="sessions" data-testid="sessions-table" data-loaded={loaded ? 'true' : 'false'}>
        <thead>
          <tr>
            <th>ID</th>
            <th>session_id</th>
            <th>Estado</th>
            <th>Acciones</th>
          </tr>
        </thead>
        <tbody>
          {sessions.map((s) => (
            <tr key={s.id} id={`session-${s.id}`} data-testid={`session-row-${s.id}`} data-status={s.status}>
              <td data-testid={`session-id-${s.id}`}>{s.id}</td>
              <td data-testid={`session-sid-${s.id}`}>{s.session_id ?? '—'}</td>
              <td data-testid={`session-status-${s.id}`} className={`status-${s.status}`}>
                {s.status}
              </td>
              <td>
                <button
                  type="button"
                  data-testid={`disconnect-${s.id}`}
                  disabled={s.status !== 'connected' || busyId !== null}
                  onClick={() => void disconnectSession(s.id)}
                >
                  {busyId === s.id ? 'Desconectando…' : 'Disconnect'}
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {loaded && sessions.length === 0 && <p data-testid="empty">No hay sesiones.</p>}
      {result && (
        <p id="result" data-testid="result" role="status" className={`result-${result.kind}`}>
          {result.text}
        </p>
      )}
    </section>
  );
}
