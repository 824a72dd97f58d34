import { describe, expect, it } from 'vitest';
import { decodeAgentMessage, encode, type AgentMessage } from '../../contract/protocol.ts';

const T = Date.parse('2026-12-01T10:00:00Z');
const sysctlRecord = { name: 'net.ipv4.vs.conn_reuse_mode', value: '0', raw: 'net.ipv4.vs.conn_reuse_mode = 0' };
const diff: AgentMessage = {
  v: 1, type: 'diff', seq: 7, time: 1_700_000_000_000,
  changes: [{ source: 'sysctl', added: [sysctlRecord], removed: ['x'], changed: [], refreshed: [] }],
  status: [],
};

describe('decodeAgentMessage', () => {
  it('round-trips a diff frame', () => {
    const r = decodeAgentMessage(encode(diff));
    expect(r).toEqual({ ok: true, msg: diff });
  });

  it.each([
    ['not JSON', '{', /not JSON/],
    ['an array', '[]', /not a JSON object/],
    ['another protocol version', JSON.stringify({ ...diff, v: 2 }), /unsupported protocol version 2/],
    ['an unknown type', JSON.stringify({ v: 1, type: 'bogus' }), /unknown message type "bogus"/],
    ['an unknown source', JSON.stringify({ ...diff, changes: [{ source: 'etc-passwd', added: [], removed: [], changed: [], refreshed: [] }] }), /unknown source "etc-passwd"/],
    ['a record of the wrong shape', JSON.stringify({ ...diff, changes: [{ source: 'sysctl', added: [{ name: 1 }], removed: [], changed: [], refreshed: [] }] }), /changes\[0\]\.added\[0\]\.name: expected string/],
    ['a string seq', JSON.stringify({ ...diff, seq: '7' }), /seq: expected a sequence number/],
    ['a negative seq', JSON.stringify({ ...diff, seq: -1 }), /seq: expected a sequence number/],
    ['a snapshot part out of range', JSON.stringify({ v: 1, type: 'snapshot', seq: 1, time: T, source: 'sysctl', part: 3, parts: 2, records: [] }), /part 3 out of 2/],
    ['a snapshot of a billion parts', JSON.stringify({ v: 1, type: 'snapshot', seq: 1, time: T, source: 'sysctl', part: 0, parts: 1e9, records: [] }), /parts: expected 1\.\.10000/],
    // Regression: `time: 1e308` passed the schema and every later GET /api/nodes crashed on `Invalid time value`.
    ['a snapshot-end at time 1e308', JSON.stringify({ v: 1, type: 'snapshot-end', seq: 1, time: 1e308, status: [] }), /time: expected epoch milliseconds between 2000 and 2100/],
    ['a diff at time 0', JSON.stringify({ ...diff, time: 0 }), /time: expected epoch milliseconds/],
    // Regression: the node name went unchecked into bundle paths (`timeline/<node>.jsonl`).
    ['a hello as a path', JSON.stringify({ v: 1, type: 'hello', node: '../../../x/pwned', agentVersion: '1', intervalMs: 1000, startedAt: T }), /node: not a Kubernetes node name/],
    ['a hello with an upper-case node name', JSON.stringify({ v: 1, type: 'hello', node: 'Node-1', agentVersion: '1', intervalMs: 1000, startedAt: T }), /node: not a Kubernetes node name/],
    ['a hello with a 254-character node name', JSON.stringify({ v: 1, type: 'hello', node: 'a'.repeat(254), agentVersion: '1', intervalMs: 1000, startedAt: T }), /node: not a Kubernetes node name/],
    ['a hello with a megabyte agent version', JSON.stringify({ v: 1, type: 'hello', node: 'n1', agentVersion: 'x'.repeat(1 << 20), intervalMs: 1000, startedAt: T }), /agentVersion: string longer than 128/],
    ['a hello with a zero interval', JSON.stringify({ v: 1, type: 'hello', node: 'n1', agentVersion: '1', intervalMs: 0, startedAt: T }), /intervalMs: expected a sample interval/],
    ['capture lines for a path-like id', JSON.stringify({ v: 1, type: 'capture-lines', id: '../x', tool: 'tcpdump', lines: [] }), /id: expected a capture id/],
    ['a diff with a thousand changes', JSON.stringify({ ...diff, changes: Array.from({ length: 1000 }, () => diff.changes[0]) }), /at most 64 source changes/],
  ])('rejects %s with a specific error', (_name, text, error) => {
    const r = decodeAgentMessage(text);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error).toMatch(error);
  });

  it('drops unknown fields so a newer agent can add some', () => {
    const r = decodeAgentMessage(JSON.stringify({ v: 1, type: 'hello', node: 'n1', agentVersion: '9', intervalMs: 1000, startedAt: T, extra: { a: 1 } }));
    expect(r.ok && r.msg).toEqual({ v: 1, type: 'hello', node: 'n1', agentVersion: '9', intervalMs: 1000, startedAt: T });
  });
});

describe('decodeCollectorMessage: capture requests', () => {
  const req = { v: 1, type: 'capture', id: '20260101T000000Z-1', durationMs: 15_000, hosts: ['198.19.1.10', 'fd00:0:0:0:0:0:0:a'], ports: [53] };
  it('accepts addresses and ports, in canonical form', async () => {
    const { decodeCollectorMessage } = await import('../../contract/protocol.ts');
    expect(decodeCollectorMessage(JSON.stringify(req))).toEqual({ ok: true, msg: { ...req, hosts: ['198.19.1.10', 'fd00::a'] } });
  });
  it.each([
    ['a host that is not an address (a tcpdump expression smuggled in)', { hosts: ['1.2.3.4 or port 22'] }, /not an IP address/],
    ['a port out of range', { ports: [70000] }, /expected 1\.\.65535/],
    ['an unbounded duration', { durationMs: 3_600_000 }, /durationMs/],
    ['an id with a path in it', { id: '../../etc' }, /capture id/],
  ])('refuses %s', async (_n, patch, error) => {
    const { decodeCollectorMessage } = await import('../../contract/protocol.ts');
    const r = decodeCollectorMessage(JSON.stringify({ ...req, ...patch }));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error).toMatch(error);
  });
});
