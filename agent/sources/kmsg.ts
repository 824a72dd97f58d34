// Parses the kernel log as /dev/kmsg gives it (Documentation/ABI/testing/
// dev-kmsg): one record per line, `prio,seq,usec,flags[,more];message`,
// optionally followed by continuation lines that start with a space
// (` SUBSYSTEM=net`, the record's dictionary). Non-printable bytes in the
// message come escaped as `\xNN`, so a record is always one line.
//
// Only the martian records are kept (net/ipv4/route.c, printed with the
// `IPv4: ` prefix of pr_fmt): they are the kernel's own word that it dropped
// a packet at the routing decision, which is what lb-healthcheck-dropped
// needs and what no counter can attribute to an address. Every other record
// (link state, OOM, audit …) is well-formed but not about the Service
// datapath; holding it would ship unrelated and possibly sensitive text to
// the collector and its bundles, and churn the diff on a busy host. Those
// records are neither kept nor problems. The ring is global to the host, so
// what is kept is bounded: the last MAX_MARTIANS, and a problem says when
// older ones were let go.
import type { KmsgMartian } from '../../contract/records.ts';
import type { ParseResult, Problem } from '../../contract/sources.ts';

/** The martian records kept: the newest this many. */
export const MAX_MARTIANS = 256;

const HEADER = /^(\d+),(\d+),(\d+),([^,;]*)(?:,[^;]*)?;(.*)$/;
const MARTIAN_SOURCE = /^(?:IPv4: )?martian source (\S+) from (\S+), on dev (\S+)$/;
const MARTIAN_DESTINATION = /^(?:IPv4: )?martian destination (\S+) from (\S+), dev (\S+)$/;
const LL_HEADER = /^(?:IPv4: )?ll header: (.*)$/;
/** `dmesg` and `journalctl -k` lines carry no sequence number, and a record's identity is its sequence number. */
const DMESG_LINE = /^\[\s*\d+\.\d+\]\s/;

type Draft = { -readonly [K in keyof KmsgMartian]: KmsgMartian[K] } & { line: number };

export function parseKmsg(text: string): ParseResult<KmsgMartian> {
  const martians: Draft[] = [];
  const problems: Problem[] = [];
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  let lastSeq: number | null = null;
  for (let i = 0; i < lines.length; i++) {
    const raw = (lines[i] ?? '').replace(/\r$/, '');
    const lineNo = i + 1;
    // A record's dictionary: belongs to the record above, and says nothing the message does not.
    if (raw.startsWith(' ') || raw === '') continue;
    const m = HEADER.exec(raw);
    if (m === null) {
      problems.push({
        line: lineNo,
        text: raw,
        reason: DMESG_LINE.test(raw)
          ? 'dmesg output, not a /dev/kmsg record: it has no sequence number to tell records apart'
          : 'not a /dev/kmsg record (prio,seq,usec,flags;message)',
      });
      continue;
    }
    const prio = Number(m[1]);
    const seq = Number(m[2]);
    const usec = Number(m[3]);
    const message = m[5] ?? '';
    if (!Number.isSafeInteger(seq) || !Number.isSafeInteger(usec) || !Number.isSafeInteger(prio)) {
      problems.push({ line: lineNo, text: raw, reason: 'a number in the record header is out of range' });
      continue;
    }
    if (lastSeq !== null && seq <= lastSeq) {
      problems.push({ line: lineNo, text: raw, reason: `sequence number ${seq} does not follow ${lastSeq}: records out of order or repeated` });
      continue;
    }
    lastSeq = seq;
    const ll = LL_HEADER.exec(message);
    if (ll !== null) {
      // print_hex_dump() logs the header as the record after its martian line.
      // Two CPUs can log two martians before either header: which is whose
      // cannot be told then, and neither gets one.
      const prev = martians.at(-1);
      const before = martians.at(-2);
      const ambiguous = before !== undefined && before.seq === seq - 2 && before.kind === 'martian-source' && before.llHeader === null;
      if (prev !== undefined && prev.kind === 'martian-source' && prev.seq === seq - 1 && prev.llHeader === null && !ambiguous) prev.llHeader = ll[1] ?? '';
      continue;
    }
    const src = MARTIAN_SOURCE.exec(message);
    const dst = src === null ? MARTIAN_DESTINATION.exec(message) : null;
    const hit = src ?? dst;
    if (hit === null) continue;
    martians.push({
      seq,
      usec,
      level: prio & 7,
      facility: prio >> 3,
      kind: src !== null ? 'martian-source' : 'martian-destination',
      dst: hit[1] ?? '',
      src: hit[2] ?? '',
      dev: hit[3] ?? '',
      llHeader: null,
      raw,
      line: lineNo,
    });
  }
  const dropped = martians.length - MAX_MARTIANS;
  if (dropped > 0) {
    const newestDropped = martians[dropped - 1];
    problems.push({
      line: newestDropped?.line ?? 1,
      text: newestDropped?.raw ?? '',
      reason: `${dropped} older martian record${dropped === 1 ? '' : 's'} not kept: the kmsg source holds the last ${MAX_MARTIANS}`,
    });
  }
  const records = martians.slice(Math.max(0, dropped)).map(({ line: _line, ...r }) => r);
  problems.sort((a, b) => a.line - b.line);
  return { records, problems };
}
