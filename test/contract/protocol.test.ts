import { describe, expect, it } from 'vitest';
import { decodeAgentMessage, encode, type AgentMessage } from '../../contract/protocol.ts';

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
    ['a string seq', JSON.stringify({ ...diff, seq: '7' }), /seq: expected integer/],
    ['a snapshot part out of range', JSON.stringify({ v: 1, type: 'snapshot', seq: 1, time: 1, source: 'sysctl', part: 3, parts: 2, records: [] }), /part 3 out of 2/],
  ])('rejects %s with a specific error', (_name, text, error) => {
    const r = decodeAgentMessage(text);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error).toMatch(error);
  });

  it('drops unknown fields so a newer agent can add some', () => {
    const r = decodeAgentMessage(JSON.stringify({ v: 1, type: 'hello', node: 'n1', agentVersion: '9', intervalMs: 1000, startedAt: 1, extra: { a: 1 } }));
    expect(r.ok && r.msg).toEqual({ v: 1, type: 'hello', node: 'n1', agentVersion: '9', intervalMs: 1000, startedAt: 1 });
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
