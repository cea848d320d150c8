import { NextResponse } from 'next/server';
import { pool } from '@/lib/db';

// GET /api/whatsapp_sessions: todas las sesiones, por id.
export const dynamic = 'force-dynamic';
export const runtime = 'nodejs';

export async function GET() {
  try {
    const result = await pool.query('SELECT * FROM whatsapp_sessions ORDER BY id');
    return NextResponse.json({ success: true, data: result.rows });
  } catch (error) {
    console.error('Error al listar sesiones de WhatsApp:', error);
    return NextResponse.json({ success: false, error: 'Error interno del servidor' }, { status: 500 });
  }
}
