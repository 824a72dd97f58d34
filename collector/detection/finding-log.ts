// Findings as log lines: one pino line each, level by severity, the summary
// as the message and the finding's own fields beside it. The `finding` key
// marks them: `jq 'select(.finding)'` keeps findings only. The API serves
// stored findings in the same shape (findingLogLine), so `conntrail logs`
// renders either.
import type { Logger } from 'pino';
import type { FindingLine } from './aggregate.ts';

/** The fields beside the message: pino owns `time` (when the line was written); the sample that showed the finding is `observedAt`. */
function fieldsOf(line: FindingLine): { summary: string; fields: Record<string, unknown> } {
  const { summary, time, ...rest } = line;
  return { summary, fields: { ...rest, observedAt: new Date(time).toISOString() } };
}

export function findingLogger(out: Logger): (line: FindingLine) => void {
  return (line) => {
    const { summary, fields } = fieldsOf(line);
    if (line.severity === 'error') out.error(fields, summary);
    else out.warn(fields, summary);
  };
}

/** A stored finding as the log wrote it, stamped with the time it was observed (when it was written is not kept). */
export function findingLogLine(line: FindingLine): Record<string, unknown> {
  const { summary, fields } = fieldsOf(line);
  return { level: line.severity === 'error' ? 50 : 40, time: line.time, ...fields, msg: summary };
}
