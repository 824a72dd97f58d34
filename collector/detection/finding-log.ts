// Findings as log lines: one pino line each, level by severity, the summary
// as the message and the finding's own fields beside it. The `finding` key
// marks them: `jq 'select(.finding)'` keeps findings only.
import type { Logger } from 'pino';
import type { FindingLine } from './aggregate.ts';

export function findingLogger(out: Logger): (line: FindingLine) => void {
  return (line) => {
    // pino owns `time` (when the line was written); the sample that showed the finding is `observedAt`.
    const { summary, time, ...rest } = line;
    const fields = { ...rest, observedAt: new Date(time).toISOString() };
    if (line.severity === 'error') out.error(fields, summary);
    else out.warn(fields, summary);
  };
}
