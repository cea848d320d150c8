import SessionsTable from '@/components/SessionsTable';

export default function Home() {
  return (
    <main>
      <h1>Sesiones de WhatsApp</h1>
      <SessionsTable />
    </main>
  );
}
