// `ip link` / `ip -o link` (FORMATS.md §6), printed by print_linkinfo() in
// iproute2 ip/ipaddress.c:
//   N: IF[@PEER]: <FLAGS> mtu M [xdp…] qdisc Q [master X] state S [mode M] group G [qlen L]
//       link/TYPE [MAC [brd|peer MAC]] [permaddr MAC] [link-netns NS|link-netnsid N] [details…]
//       [altname NAME]…
// `ip addr` prints the same header and link/ line, then its address lines;
// `ip -o` joins an interface's lines with a backslash (_SL_ in ip/ip.c).
// `@PEER` is the other end of a veth/vlan (`@if5` when it lives in another
// namespace, `@NONE` when unknown); it is not part of the name.
import type { Link } from '../../contract/records.ts';
import type { ParseResult, Problem } from '../../contract/sources.ts';
import { tailFrom, tokenize, unreadTail, type Token } from './routes.ts';

export interface LinkHeader {
  readonly ifindex: number;
  readonly ifname: string;
  readonly flags: readonly string[];
  readonly mtu: number | null;
  readonly qdisc: string | null;
  readonly operState: string | null;
  /** Offset in the line where the `\`-joined rest (`ip -o`) begins, or the line's length. */
  readonly end: number;
  /** Header text that print_linkinfo() does not print (an annotation), if any. */
  readonly tail: Token | null;
  /** A keyword the line ends on without its value: the line was cut. */
  readonly cut: string | null;
}

// Linux interface names cannot hold `/`, `:` or blanks (dev_valid_name()).
const HEADER = /^\s*(\d+):\s+([^\s:/@]+)(?:@([^\s:/]*))?:\s+<([^>]*)>/;
const VALUE_KEYS = new Set(['mtu', 'qdisc', 'master', 'state', 'mode', 'group', 'qlen', 'protodown', 'protodown_reason']);

/** The `N: IF[@PEER]: <FLAGS> …` header of `ip link` and `ip addr`; null for any other line. */
export function readLinkHeader(line: string): LinkHeader | null {
  const m = HEADER.exec(line);
  if (m === null) return null;
  const backslash = line.indexOf('\\', m[0].length);
  const end = backslash < 0 ? line.length : backslash;
  const fields = new Map<string, string>();
  let tail: Token | null = null;
  let cut: string | null = null;
  const tokens = tokenize(line.slice(0, end), m[0].length);
  for (let i = 0; i < tokens.length; i++) {
    const tok = tokens[i] as Token;
    const value = tokens[i + 1]?.text;
    // xdp_dump(): `xdp/id:42`, `xdpgeneric/id:42`, `xdpoffload/id:42`, `xdpmulti`.
    if (tok.text.startsWith('xdp')) continue;
    if (!VALUE_KEYS.has(tok.text)) {
      tail = tok;
      break;
    }
    if (value === undefined) {
      cut = tok.text;
      break;
    }
    fields.set(tok.text, value);
    i++;
  }
  const mtu = fields.get('mtu');
  return {
    ifindex: Number(m[1]),
    ifname: m[2] ?? '',
    flags: (m[4] ?? '').split(',').filter((f) => f !== ''),
    mtu: mtu !== undefined && /^\d+$/.test(mtu) ? Number(mtu) : null,
    qdisc: fields.get('qdisc') ?? null,
    operState: fields.get('state') ?? null,
    end,
    tail,
    cut,
  };
}

/** `link/TYPE [ADDR]` of a link line (or of the `\`-joined part of an `ip -o` line). */
function readLinkLine(text: string): { linkType: string; mac: string | null } | null {
  const m = /^\s*link\/(\S+)(?:\s+(\S+))?/.exec(text);
  if (m === null) return null;
  const addr = m[2];
  // `link/none` (tun) has no address; `brd`/`peer` would be the next field.
  const mac = addr === undefined || addr === 'brd' || addr === 'peer' || addr === 'link-netns' || addr === 'link-netnsid' ? null : addr;
  return { linkType: m[1] ?? '', mac };
}

// Lines of `ip addr` (and of `ip -o addr`) that belong to the address parser:
// print_addrinfo() in ip/ipaddress.c.
const ADDR_LINE = /^\s+(inet6?|valid_lft)\s/;
const ONELINE_ADDR_LINE = /^\s*\d+:\s+\S+\s+(inet6?|family\s)/;
// Other indented lines that print_linkinfo() writes after link/…
const SKIPPED_LINE = /^\s+(altname|prop list)\b/;

const ANNOTATION = /\s(<-|#|\/\/|\.\.\.|…)/;

/**
 * Parses `ip link`, `ip -o link`, and the link part of `ip addr` / `ip -o addr`
 * (address lines are skipped silently, so one text can feed both parsers).
 * A multi-line record's raw is its header and link/ line joined with `\n`.
 */
export function parseLinks(text: string): ParseResult<Link> {
  const records: Link[] = [];
  const problems: Problem[] = [];
  let open: { header: LinkHeader; raw: string[]; index: number; linkSeen: boolean } | null = null;
  const lines = text.split('\n');
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n] ?? '';
    const lineNo = n + 1;
    if (line.trim() === '') {
      open = null;
      continue;
    }

    const header = readLinkHeader(line);
    if (header !== null && header.cut !== null) {
      open = null;
      problems.push({ line: lineNo, text: line, reason: `\`${header.cut}\` without a value (a cut line?)` });
      continue;
    }
    if (header !== null) {
      const rest = line.slice(header.end + 1);
      const link = header.end < line.length ? readLinkLine(rest) : null;
      records.push(toLink(header, link, line));
      open = { header, raw: [line], index: records.length - 1, linkSeen: link !== null };
      if (header.tail !== null) problems.push(unreadTail(lineNo, line, header.tail, 'ip link'));
      else if (ANNOTATION.test(rest)) problems.push(annotated(lineNo, line, rest));
      continue;
    }

    const link = readLinkLine(line);
    if (link !== null) {
      if (open === null || open.linkSeen) {
        problems.push({ line: lineNo, text: line, reason: 'link/ line without an interface header above it' });
        continue;
      }
      open.raw.push(line);
      open.linkSeen = true;
      records[open.index] = toLink(open.header, link, open.raw.join('\n'));
      if (ANNOTATION.test(line)) problems.push(annotated(lineNo, line, line));
      continue;
    }

    if (ADDR_LINE.test(line) || ONELINE_ADDR_LINE.test(line) || SKIPPED_LINE.test(line)) continue;
    open = null;
    problems.push({ line: lineNo, text: line, reason: 'not a line of ip link or ip addr (expected `N: IF: <FLAGS> …` or `link/…`)' });
  }
  return { records, problems };
}

function annotated(lineNo: number, line: string, part: string): Problem {
  const at = ANNOTATION.exec(part);
  const start = line.length - part.length + (at === null ? 0 : at.index + 1);
  return { line: lineNo, text: line, reason: `text that ip link does not print, ignored: ${JSON.stringify(tailFrom(line, { text: '', start }))}` };
}

function toLink(h: LinkHeader, link: { linkType: string; mac: string | null } | null, raw: string): Link {
  return {
    ifindex: h.ifindex,
    ifname: h.ifname,
    flags: [...h.flags],
    mtu: h.mtu,
    qdisc: h.qdisc,
    operState: h.operState,
    linkType: link?.linkType ?? null,
    mac: link?.mac ?? null,
    raw,
  };
}
