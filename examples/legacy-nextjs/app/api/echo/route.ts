import { createHash } from 'node:crypto';
import { NextRequest, NextResponse } from 'next/server';

// Any method: what arrived (method, path, headers, body length and SHA-256).
export const dynamic = 'force-dynamic';
export const runtime = 'nodejs';

async function echo(request: NextRequest) {
  const body = Buffer.from(await request.arrayBuffer());
  const headers: [string, string][] = [];
  request.headers.forEach((value, name) => headers.push([name, value]));
  return NextResponse.json({
    method: request.method,
    path: request.nextUrl.pathname,
    query: request.nextUrl.search,
    headers,
    body_length: body.length,
    body_sha256: createHash('sha256').update(body).digest('hex'),
  });
}

export const GET = echo;
export const POST = echo;
export const PUT = echo;
export const PATCH = echo;
export const DELETE = echo;
export const OPTIONS = echo;
