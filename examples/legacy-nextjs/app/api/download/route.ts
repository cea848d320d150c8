import { NextRequest } from 'next/server';
import { intParam } from '@/lib/sleep';

// A deterministic download of `bytes` bytes, generated and streamed 64 KiB at a time:
// byte i is (i mod 251 + floor(i / 65536)) mod 256. (Next.js sends route handler bodies
// chunked, never with a Content-Length.)
export const dynamic = 'force-dynamic';
export const runtime = 'nodejs';

const CHUNK = 64 * 1024;
const MAX = 1024 * 1024 * 1024;

export async function GET(request: NextRequest) {
  const total = intParam(request.nextUrl.searchParams.get('bytes'), 1024 * 1024, 0, MAX);
  let sent = 0;
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent >= total) {
        controller.close();
        return;
      }
      const buf = new Uint8Array(Math.min(CHUNK, total - sent));
      for (let j = 0; j < buf.length; j++) {
        const i = sent + j;
        buf[j] = ((i % 251) + Math.floor(i / 65536)) & 0xff;
      }
      sent += buf.length;
      controller.enqueue(buf);
    },
  });
  return new Response(stream, {
    headers: {
      'Content-Type': 'application/octet-stream',
      'Content-Disposition': 'attachment; filename="download.bin"',
      'Cache-Control': 'no-store',
    },
  });
}
