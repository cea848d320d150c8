import { Pool } from 'pg';

// One pool per server process (kept across hot reloads in development).
const globalForPg = globalThis as unknown as { pgPool?: Pool };

export const pool: Pool =
  globalForPg.pgPool ??
  new Pool({
    connectionString: process.env.DATABASE_URL,
    max: 10,
    connectionTimeoutMillis: 5000,
  });

if (process.env.NODE_ENV !== 'production') globalForPg.pgPool = pool;

// An idle client losing its connection (database restarted) must not crash the server.
pool.on('error', (err) => {
  console.error('Error inesperado en un cliente inactivo de PostgreSQL:', err.message);
});
