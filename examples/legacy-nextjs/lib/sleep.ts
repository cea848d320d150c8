export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** An integer query parameter, clamped; `fallback` when absent or not a number. */
export function intParam(value: string | null, fallback: number, min: number, max: number) {
  const n = value === null ? NaN : parseInt(value, 10);
  if (isNaN(n)) return fallback;
  return Math.min(max, Math.max(min, n));
}
