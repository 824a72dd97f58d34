// The agent's view of its node across a conntrack read that fails half way:
// the diff it could send would no longer match what the collector holds, so
// the next good read asks for a snapshot instead.
import { describe, expect, it } from 'vitest';
import { NodeState } from '../../agent/node-state.ts';
import { createRecordedIO } from '../../agent/recorded-io.ts';
import { createSamplers } from '../../agent/samplers.ts';
import type { HostIO } from '../../agent/host-io.ts';
import { ConntrailError } from '../../contract/errors.ts';

const entry = (sport: number, state = 'TIME_WAIT') =>
  `ipv4     2 tcp      6 100 ${state} src=198.19.1.10 dst=198.18.64.10 sport=${sport} dport=80 src=198.19.1.11 dst=198.19.1.10 sport=8080 dport=${sport} [ASSURED] mark=0 zone=0 use=2`;

describe('NodeState', () => {
  it('after a conntrack read that failed half way, sends no diff and asks for a resync on the next good read', async () => {
    let failHalfWay = false;
    const table = new Map([['/proc/net/nf_conntrack', `${entry(1000)}\n${entry(1001)}\n`]]);
    const recorded = createRecordedIO(() => table, () => 0);
    const io: HostIO = {
      ...recorded,
      async readLinesWith(path, consume) {
        if (!failHalfWay) return recorded.readLinesWith(path, consume);
        consume(Buffer.from(`${entry(1000, 'SYN_SENT')}\n`, 'latin1'));
        throw new ConntrailError('SOURCE_FAILED', `cannot read ${path}: EIO`);
      },
    };
    const state = new NodeState(createSamplers().filter((s) => s.source === 'conntrack'), io, () => 0);
    await state.tick();
    expect(state.takeResync()).toBe(false);

    failHalfWay = true;
    const failed = await state.tick();
    expect(failed.statusChanges).toMatchObject([{ source: 'conntrack', state: 'failed' }]);

    failHalfWay = false;
    table.set('/proc/net/nf_conntrack', `${entry(1000, 'SYN_SENT')}\n${entry(1002)}\n`);
    const next = await state.tick();
    expect(next.changes).toEqual([]);
    expect(state.takeResync()).toBe(true);
    expect(state.takeResync()).toBe(false);
    // The snapshot the agent then sends is what the table holds now.
    const sent = [...state.snapshot(1000)].flatMap((c) => c.records) as { orig: { sport: number }; state: string }[];
    expect(sent.map((r) => [r.orig.sport, r.state]).sort()).toEqual([[1000, 'SYN_SENT'], [1002, 'TIME_WAIT']]);
  });
});
