import { describe, expect, it } from 'vitest';
import { tcpdumpArgs } from '../../agent/capture.ts';

describe('tcpdumpArgs', () => {
  it('filters to the incident hosts and ports, line-buffered and numeric, as separate argv words', () => {
    expect(tcpdumpArgs({ hosts: ['198.19.1.10', '198.18.64.53'], ports: [41053, 53] })).toEqual([
      '-l', '-nn', '-i', 'any', '(', 'host', '198.19.1.10', 'or', 'host', '198.18.64.53', ')', 'and', '(', 'port', '41053', 'or', 'port', '53', ')',
    ]);
  });
  it('captures on any interface without a filter when the request names nothing', () => {
    expect(tcpdumpArgs({ hosts: [], ports: [] })).toEqual(['-l', '-nn', '-i', 'any']);
  });
});
