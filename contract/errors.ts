// One catalogue of error codes. Tests assert on codes, not messages.
export type ErrorCode =
  | 'TOOL_MISSING' // the command is not installed on this node
  | 'SOURCE_UNAVAILABLE' // the tool runs but this node has no such thing (no IPVS, no procfs conntrack)
  | 'SOURCE_FAILED' // the read failed this time (non-zero exit, timeout, output too large)
  | 'BAD_CONFIG' // a command-line flag or environment value is unusable
  | 'BAD_INPUT'; // a file or stream given to a command cannot be read

export class ConntrailError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'ConntrailError';
  }
}

export const isConntrailError = (e: unknown, code?: ErrorCode): e is ConntrailError =>
  e instanceof ConntrailError && (code === undefined || e.code === code);
