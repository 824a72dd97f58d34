// `ip rule show` / `ip -6 rule show` (FORMATS.md §6), printed by print_rule()
// in iproute2 ip/iprule.c:
//   PRIO:<TAB>[not ]from all|PFX [to PFX] [tos T] [fwmark M[/MASK]] [iif I [detached]]
//   [oif O [detached]] [uidrange A-B] [ipproto P] [sport S] [dport D] [tun_id N]
//   ACTION [proto P]
// ACTION is `lookup T [suppress_prefixlength N] [suppress_ifgroup G]`,
// `goto N [unresolved]`, `nop`, `map-to A` (old NAT rules), or the rule type
// (`blackhole`, `unreachable`, `prohibit`). Before iproute2 v5.1.0 (927632d4)
// every line ended with a space. The TAB after `PRIO:` is often expanded to
// spaces in pasted copies (FORMATS.md §7).
import type { RoutingRule } from '../../contract/records.ts';
import type { ParseResult, Problem } from '../../contract/sources.ts';
import { readPrefix, tokenize, unreadTail, type Family, type Token } from './routes.ts';

export interface RuleDefaults {
  /** Family of a rule whose selectors name no address (`from all lookup main`): the `-6` flag of the command. */
  readonly family?: Family;
}

const TYPE_ACTIONS = new Set(['blackhole', 'unreachable', 'prohibit', 'nop']);
// Selectors and options the record does not keep, each with one value.
const IGNORED_KEYS = new Set([
  'tos', 'dsfield', 'dscp', 'flowlabel', 'uidrange', 'ipproto', 'sport', 'dport', 'tun_id', 'suppress_prefixlength',
  'suppress_ifgroup', 'realms', 'proto', 'protocol',
]);
const PRIORITY = /^\s*(\d+):\s*/;

/**
 * Parses `ip [-6] rule show`. `table` is the table a `lookup` rule reads (and
 * `action` is null for it); any other rule has `table` null and `action` set to
 * what it does (`blackhole`, `unreachable`, `prohibit`, `nop`, `goto 32766`,
 * `map-to 10.0.0.1`).
 */
export function parseRules(text: string, defaults: RuleDefaults = {}): ParseResult<RoutingRule> {
  const records: RoutingRule[] = [];
  const problems: Problem[] = [];
  const lines = text.split('\n');
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n] ?? '';
    const lineNo = n + 1;
    if (line.trim() === '') continue;
    const bad = (reason: string): void => {
      problems.push({ line: lineNo, text: line, reason });
    };

    const prio = PRIORITY.exec(line);
    if (prio === null) {
      bad('not an ip rule line (expected `PRIORITY:` then the selector)');
      continue;
    }
    const priority = Number(prio[1]);
    if (priority > 0xffffffff) {
      bad(`priority ${prio[1]} is out of range`);
      continue;
    }
    const tokens = tokenize(line, prio[0].length);
    let i = 0;
    const not = tokens[0]?.text === 'not';
    if (not) i++;
    if (tokens[i]?.text !== 'from') {
      bad('no `from` selector after the priority (iproute2 always prints one)');
      continue;
    }
    const fromText = tokens[i + 1]?.text;
    const from = fromText === undefined ? null : readPrefix(fromText);
    if (from === null || from.text === 'default') {
      bad(fromText === undefined ? '`from` without a value (a cut line?)' : `from ${JSON.stringify(fromText)} is not \`all\` or a prefix`);
      continue;
    }
    i += 2;

    let to: string | null = null;
    let family = from.family;
    let fwmark: string | null = null;
    let iif: string | null = null;
    let oif: string | null = null;
    let table: string | null = null;
    let action: string | null = null;
    let tail: Token | null = null;
    let failure: string | null = null;
    while (i < tokens.length) {
      const tok = tokens[i] as Token;
      const key = tok.text;
      if (TYPE_ACTIONS.has(key)) {
        action = key;
        i++;
        continue;
      }
      const takesValue = key === 'to' || key === 'fwmark' || key === 'iif' || key === 'oif' || key === 'lookup' || key === 'table' ||
        key === 'goto' || key === 'map-to' || key === 'nat' || IGNORED_KEYS.has(key);
      if (!takesValue) {
        tail = tok;
        break;
      }
      const v = tokens[i + 1]?.text;
      if (v === undefined) {
        failure = `\`${key}\` without a value (a cut line?)`;
        break;
      }
      i += 2;
      // print_rule() marks an interface that does not exist (yet) and a goto
      // whose target priority has no rule.
      const marker = tokens[i]?.text;
      const skipMarker = (m: string): void => {
        if (marker === m) i++;
      };
      switch (key) {
        case 'to': {
          const p = readPrefix(v);
          if (p === null || p.text === 'default' || p.text === 'all') {
            failure = `to ${JSON.stringify(v)} is not a prefix`;
            break;
          }
          to = p.text;
          family ??= p.family;
          break;
        }
        case 'fwmark':
          fwmark = v;
          break;
        case 'iif':
          iif = v;
          skipMarker('[detached]');
          break;
        case 'oif':
          oif = v;
          skipMarker('[detached]');
          break;
        case 'lookup':
        case 'table':
          table = v;
          break;
        case 'goto':
          action = `goto ${v}`;
          skipMarker('[unresolved]');
          break;
        case 'map-to':
        case 'nat':
          action = `map-to ${v}`;
          break;
      }
      if (failure !== null) break;
    }
    if (failure !== null) {
      bad(failure);
      continue;
    }
    records.push({
      family: family ?? defaults.family ?? 'inet',
      priority,
      not,
      from: from.text,
      to,
      fwmark,
      iif,
      oif,
      table,
      action,
      raw: line,
    });
    if (tail !== null) problems.push(unreadTail(lineNo, line, tail, 'ip rule'));
  }
  return { records, problems };
}
