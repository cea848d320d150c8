import { NextRequest } from 'next/server';
import { intParam, sleep } from '@/lib/sleep';

// Server-Sent Events: `n` events `interval` ms apart; each carries the time it was produced.
export const dynamic = 'force-dynamic';
export const runtime = 'nodejs';

export async function GET(request: NextRequest) {
  const n = intParam(request.nextUrl.searchParams.get('n'), 5, 1, 100);
  const interval = intParam(request.nextUrl.searchParams.get('interval'), 200, 0, 10000);
  const encoder = new TextEncoder();
  let sent = 0;
  const stream = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (sent > 0) await sleep(interval);
      sent += 1;
      const data = JSON.stringify({ n: sent, of: n, t: Date.now() });
      controller.enqueue(encoder.encode(`id: ${sent}\nevent: tick\ndata: ${data}\n\n`));
      if (sent >= n) controller.close();
    },
  });
  return new Response(stream, {
    headers: {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-cache, no-transform',
      'X-Accel-Buffering': 'no',
    },
  });
}
