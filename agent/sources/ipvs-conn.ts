// IPVS connection entries, in the two forms people capture (FORMATS.md §1),
// told apart line by line so a paste mixing them still reads:
// - `ipvsadm -Lnc`, print_conn() in ipvsadm.c:
//   `%-3s %-6s %-11s %-18s %-18s %s` = proto, expire `MM:SS`, state, client,
//   virtual, destination (`[v6]:port` bracketed, ports decimal), plus
//   pe_name and pe_data with --persistent-conn. Fields wider than their
//   column push the next one along, so the line is read by whitespace.
// - raw /proc/net/ip_vs_conn, ip_vs_conn_seq_show() in ip_vs_conn.c:
//   `%-3s %08X %04X %08X %04X %s %04X %-11s %7lu%s` = proto, client, cport,
//   virtual, vport, destination, dport (upper-case hex, IPv6 as full %pI6),
//   state, expires in seconds, then ` <pe_name> <pe_data>` if a persistence
//   engine attached data.
import { canonicalIp, splitHostPort } from '../../contract/address.ts';
import type { IpvsConnection } from '../../contract/records.ts';
import type { ParseResult, Problem } from '../../contract/sources.ts';

const BLANKS = /\s+/;
const EXPIRE = /^(\d+):([0-5]\d)$/;
const DECIMAL = /^\d+$/;
const HEX_PORT = /^[0-9A-F]{4}$/;
const HEX_V4 = /^[0-9A-F]{8}$/;
/** Protocol names ip_vs_proto_name() gives; `IP` is a fwmark template. */
const PROTO = /^(TCP|UDP|SCTP|AH|ESP|IP)$/;
const STATE = /^[A-Z_!?]+$/;

/** list_conn() prints this before the header; print_conn() never prints it per line. */
const TITLE = 'IPVS connection entries';

function isHeader(tokens: readonly string[]): boolean {
  const [a, b, c] = tokens;
  // ipvsadm: `pro expire state source virtual destination [pe name pe_data]`;
  // kernel: `Pro FromIP FPrt ToIP TPrt DestIP DPrt State Expires PEName PEData`.
  return (a === 'pro' && b === 'expire' && c === 'state') || (a === 'Pro' && b === 'FromIP' && c === 'FPrt');
}

type Endpoint = { address: string; port: number };

/** `10.0.0.1:80` or `[fd00::a]:53`, as addrport_to_anyname() prints them with -n. */
function numericEndpoint(text: string): Endpoint | string {
  const hp = splitHostPort(text);
  const address = hp === null ? null : canonicalIp(hp.host);
  if (hp === null || address === null || !DECIMAL.test(hp.port) || Number(hp.port) > 65535) {
    return `${JSON.stringify(text)} is not a numeric address:port: take the output with \`ipvsadm -Lnc\` (without -n ipvsadm prints host and service names)`;
  }
  return { address, port: Number(hp.port) };
}

/** A kernel-side address: `%08X` host-order IPv4, or the full `%pI6` form. */
function procAddress(text: string): string | null {
  if (HEX_V4.test(text)) {
    const v = parseInt(text, 16);
    return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
  }
  return text.includes(':') ? canonicalIp(text) : null;
}

function ipvsadmLine(line: string, tokens: readonly string[]): IpvsConnection | string {
  // 6 fields, or 8 with --persistent-conn (pe_name, pe_data), which print_conn
  // adds only when the kernel line had them.
  if (tokens.length !== 6 && tokens.length !== 8) return `${tokens.length} fields where ipvsadm -Lnc prints 6 (8 with --persistent-conn)`;
  const [proto = '', expire = '', state = '', src = '', vip = '', dst = '', peName] = tokens;
  // A persistence engine's name (`sip`), as ip_vs_pe registers it.
  if (peName !== undefined && !/^[a-z][a-z0-9_]*$/.test(peName)) return `unexpected ${JSON.stringify(tokens.slice(6).join(' '))} after the destination`;
  const m = EXPIRE.exec(expire);
  if (m === null) return `expire ${JSON.stringify(expire)} is not MM:SS`;
  if (!STATE.test(state)) return `${JSON.stringify(state)} is not a connection state`;
  const client = numericEndpoint(src);
  if (typeof client === 'string') return client;
  const virtual = numericEndpoint(vip);
  if (typeof virtual === 'string') return virtual;
  const destination = numericEndpoint(dst);
  if (typeof destination === 'string') return destination;
  // Minutes are not bounded (`seconds = expires % 60; minutes = expires / 60`).
  return connection(proto, [client, virtual, destination], state, Number(m[1]) * 60 + Number(m[2]), line);
}

/** Both forms name the same things; a client port of 0 marks a persistence template. */
function connection(proto: string, [client, virtual, destination]: readonly [Endpoint, Endpoint, Endpoint], state: string, expiresSeconds: number, raw: string): IpvsConnection {
  return { proto, client, virtual, destination, state, expiresSeconds, template: client.port === 0, raw };
}

function procLine(line: string, tokens: readonly string[]): IpvsConnection | string {
  if (tokens.length !== 9 && tokens.length !== 11) return `${tokens.length} fields where /proc/net/ip_vs_conn prints 9 (11 with a persistence engine)`;
  const [proto = '', caddr = '', cport = '', vaddr = '', vport = '', daddr = '', dport = '', state = '', expires = ''] = tokens;
  const ends: Endpoint[] = [];
  for (const [addr, port, what] of [
    [caddr, cport, 'client'],
    [vaddr, vport, 'virtual'],
    [daddr, dport, 'destination'],
  ] as const) {
    const address = procAddress(addr);
    if (address === null) return `${what} address ${JSON.stringify(addr)} is neither %08X nor a full IPv6 address`;
    if (!HEX_PORT.test(port)) return `${what} port ${JSON.stringify(port)} is not %04X hex`;
    ends.push({ address, port: parseInt(port, 16) });
  }
  if (!STATE.test(state)) return `${JSON.stringify(state)} is not a connection state`;
  if (!DECIMAL.test(expires)) return `expires ${JSON.stringify(expires)} is not a number of seconds`;
  const seconds = Number(expires);
  // `(cp->timer.expires - jiffies)/HZ` is unsigned: a timer that already
  // fired but whose entry is not yet reaped underflows to ~2^64/HZ.
  return connection(proto, ends as [Endpoint, Endpoint, Endpoint], state, Number.isSafeInteger(seconds) ? seconds : 0, line);
}

/**
 * One connection line of either form. Header and title lines are not
 * connections: they come back as errors here and parseIpvsConn skips them.
 */
export function parseIpvsConnLine(line: string): IpvsConnection | { error: string } {
  const tokens = line.trim().split(BLANKS);
  const [proto = '', second = ''] = tokens;
  if (!PROTO.test(proto)) return { error: 'not an IPVS connection line (expected TCP, UDP, SCTP, AH, ESP or IP first)' };
  // ipvsadm's second field is the `MM:SS` expire; the kernel's is an address.
  const r = /^\d+:\d+$/.test(second) ? ipvsadmLine(line, tokens) : procLine(line, tokens);
  return typeof r === 'string' ? { error: r } : r;
}

export function parseIpvsConn(text: string): ParseResult<IpvsConnection> {
  const records: IpvsConnection[] = [];
  const problems: Problem[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const rawLine = lines[i] ?? '';
    const line = rawLine.endsWith('\r') ? rawLine.slice(0, -1) : rawLine;
    const trimmed = line.trim();
    if (trimmed === '' || trimmed === TITLE) continue;
    // Only the two header lines start with pro/Pro; a connection line starts
    // with an upper-case protocol name.
    if ((trimmed.startsWith('pro ') || trimmed.startsWith('Pro ')) && isHeader(trimmed.split(BLANKS))) continue;
    const r = parseIpvsConnLine(line);
    if ('error' in r) problems.push({ line: i + 1, text: line, reason: r.error });
    else records.push(r);
  }
  return { records, problems };
}
