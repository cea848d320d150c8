/** @type {import('next').NextConfig} */
const nextConfig = {
  // `pg` stays a plain Node dependency of the server, not bundled.
  serverExternalPackages: ['pg'],
  // No ESLint setup in this example; TypeScript is still checked by `next build`.
  eslint: { ignoreDuringBuilds: true },
};

export default nextConfig;
