import { NextRequest } from 'next/server';
import { intParam, sleep } from '@/lib/sleep';

// A text answer streamed in `chunks` pieces, `delay` ms apart.
export const dynamic = 'force-dynamic';
export const runtime = 'nodejs';

export async function GET(request: NextRequest) {
  const chunks = intParam(request.nextUrl.searchParams.get('chunks'), 5, 1, 100);
  const delay = intParam(request.nextUrl.searchParams.get('delay'), 100, 0, 5000);
  const encoder = new TextEncoder();
  let sent = 0;
  const stream = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (sent > 0) await sleep(delay);
      sent += 1;
      controller.enqueue(encoder.encode(`trozo ${sent} de ${chunks}\n`));
      if (sent >= chunks) controller.close();
    },
  });
  return new Response(stream, {
    headers: { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' },
  });
}
