import { NextRequest, NextResponse } from 'next/server';
import { pool } from '@/lib/db';
import { WHATSAPP_CONFIG } from '@/config/whatsapp_api';

// POST /api/whatsapp_sessions/[id]/disconnect
// Desconecta una sesión de WhatsApp QR en el orquestador y la marca como 'disconnected'.
// (docs/disconnect-endpoint.md)

export const dynamic = 'force-dynamic';
export const runtime = 'nodejs';

type RouteContext = { params: Promise<{ id: string }> };

export async function POST(request: NextRequest, { params }: RouteContext) {
  try {
    const { id } = await params;
    const sessionId = parseInt(id);

    // 1. Validación del ID
    if (isNaN(sessionId) || sessionId <= 0) {
      return NextResponse.json({ success: false, error: 'ID inválido' }, { status: 400 });
    }

    // 2. Buscar la sesión
    const sessionResult = await pool.query('SELECT * FROM whatsapp_sessions WHERE id = $1', [
      sessionId,
    ]);

    if (sessionResult.rows.length === 0) {
      return NextResponse.json(
        { success: false, error: 'Sesión de WhatsApp no encontrada' },
        { status: 404 }
      );
    }

    const session = sessionResult.rows[0];

    // 3. Verificación de estado
    if (session.status !== 'connected') {
      return NextResponse.json(
        {
          success: false,
          error: 'La sesión no está conectada',
          details: `Estado actual: ${session.status}`,
        },
        { status: 400 }
      );
    }

    // 4. Verificación de session_id
    if (!session.session_id || session.session_id.trim() === '') {
      return NextResponse.json(
        { success: false, error: 'La sesión no tiene session_id del orquestador' },
        { status: 400 }
      );
    }

    // 5. Desconexión en el orquestador
    const orchestratorUrl = `${WHATSAPP_CONFIG.ORCHESTRATOR_BASE_URL}${WHATSAPP_CONFIG.DISCONNECT_SESSION_ENDPOINT}/${encodeURIComponent(session.session_id)}/disconnect`;

    let orchestratorResponse: Response;
    let orchestratorData: any;
    const controller = new AbortController();
    const timeoutId = setTimeout(() => controller.abort(), WHATSAPP_CONFIG.REQUEST_TIMEOUT);

    try {
      orchestratorResponse = await fetch(orchestratorUrl, {
        method: 'POST',
        headers: { Accept: 'application/json' },
        signal: controller.signal,
      });
      orchestratorData = await orchestratorResponse.json();
    } catch (fetchError) {
      console.error('Error al comunicarse con el orquestador:', fetchError);
      return NextResponse.json(
        {
          success: false,
          error: 'Error al comunicarse con el orquestador de WhatsApp',
          details: 'Error de conexión al orquestador',
        },
        { status: 502 }
      );
    } finally {
      clearTimeout(timeoutId);
    }

    if (!orchestratorResponse.ok || orchestratorData.success !== true) {
      return NextResponse.json(
        {
          success: false,
          error: 'Error al desconectar sesión en el orquestador',
          details:
            orchestratorData.error ||
            orchestratorData.message ||
            'Error desconocido del orquestador',
        },
        { status: 500 }
      );
    }

    // 6. Actualización de estado
    let updatedSession = null;
    try {
      const updateResult = await pool.query(
        "UPDATE whatsapp_sessions SET status = 'disconnected', updated_at = NOW() WHERE id = $1 RETURNING *",
        [sessionId]
      );
      updatedSession = updateResult.rows[0];
    } catch (dbError) {
      console.error('Error al actualizar el estado de la sesión:', dbError);
      return NextResponse.json({
        success: true,
        message: 'Sesión desconectada exitosamente',
        warning:
          'La sesión se desconectó en el orquestador, pero no se pudo actualizar su estado en la base de datos',
        data: {
          session_id: session.session_id,
          orchestrator_disconnect: orchestratorData,
          updated_session: null,
        },
      });
    }

    return NextResponse.json({
      success: true,
      message: 'Sesión desconectada exitosamente',
      data: {
        session_id: session.session_id,
        orchestrator_disconnect: orchestratorData,
        updated_session: updatedSession,
      },
    });
  } catch (error) {
    console.error('Error al desconectar sesión de WhatsApp:', error);
    return NextResponse.json({ success: false, error: 'Error interno del servidor' }, { status: 500 });
  }
}

function methodNotAllowed() {
  return NextResponse.json({ success: false, error: 'Método no permitido' }, { status: 405 });
}

export async function GET() {
  return methodNotAllowed();
}

export async function PUT() {
  return methodNotAllowed();
}

export async function DELETE() {
  return methodNotAllowed();
}

export async function PATCH() {
  return methodNotAllowed();
}

export async function OPTIONS() {
  return methodNotAllowed();
}
