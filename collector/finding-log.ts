// Findings as log lines: one pino line each, level by severity, the summary
// as the message and the finding's own fields beside it.
import type { Logger } from 'pino';
import type { FindingLine } from './aggregate.ts';

export function findingLogger(log: Logger): (line: FindingLine) => void {
  const out = log.child({ component: 'findings' });
  return (line) => {
    // pino owns `time` (when the line was written); the sample that showed the finding is `observedAt`.
    const { summary, time, ...rest } = line;
    const fields = { ...rest, observedAt: new Date(time).toISOString() };
    if (line.severity === 'error') out.error(fields, summary);
    else out.warn(fields, summary);
  };
}
