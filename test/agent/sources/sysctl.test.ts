import { describe, expect, it } from 'vitest';
import { parseSysctl, sysctlNameOfPath } from '../../../agent/sources/sysctl.ts';

describe('parseSysctl', () => {
  it('reads `sysctl -a` lines, keeping multi-value knobs readable', () => {
    const text = 'net.ipv4.vs.conn_reuse_mode = 0\nnet.ipv4.ip_local_port_range = 32768\t60999\n\nnet.ipv4.conf.kube-ipvs0.accept_local = 0\n';
    const { records, problems } = parseSysctl(text);
    expect(problems).toEqual([]);
    expect(records).toEqual([
      { name: 'net.ipv4.vs.conn_reuse_mode', value: '0', raw: 'net.ipv4.vs.conn_reuse_mode = 0' },
      { name: 'net.ipv4.ip_local_port_range', value: '32768 60999', raw: 'net.ipv4.ip_local_port_range = 32768\t60999' },
      { name: 'net.ipv4.conf.kube-ipvs0.accept_local', value: '0', raw: 'net.ipv4.conf.kube-ipvs0.accept_local = 0' },
    ]);
  });

  it.each([
    ['sysctl: cannot stat /proc/sys/net/ipv4/vs/conn_reuse_mode: No such file or directory'],
    ['net.ipv4.vs.conn_reuse_mode=0 # annotated'],
  ])('reports %j as a problem with its line number', (line) => {
    const { records, problems } = parseSysctl(`net.ipv4.ip_forward = 1\n${line}\n`);
    expect(records).toHaveLength(1);
    expect(problems).toEqual([{ line: 2, text: line, reason: 'not a `name = value` sysctl line' }]);
  });

  it('names a per-interface knob the way sysctl does, even for interface names with dots', () => {
    expect(sysctlNameOfPath('/proc/sys/net/ipv4/conf/eth0.100/rp_filter')).toBe('net.ipv4.conf.eth0/100.rp_filter');
    expect(sysctlNameOfPath('/proc/sys/net/ipv4/vs/conn_reuse_mode')).toBe('net.ipv4.vs.conn_reuse_mode');
  });
});
