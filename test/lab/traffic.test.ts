// The traffic script's contract: the lines it prints, and its refusal to send
// anywhere but lab addresses. These run without root and send nothing.
import { execFile } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { nodeBinary, parseAttempt, parseServerEvent, trafficArgv } from './traffic.ts';

function runScript(args: readonly string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const [node, script] = trafficArgv('unused', []);
  return new Promise((resolve) => {
    const child = execFile(node ?? '', [script ?? '', ...args], { timeout: 10_000 }, (err, stdout, stderr) => {
      const code = err && typeof err.code === 'number' ? err.code : err ? -1 : 0;
      resolve({ code, stdout, stderr });
    });
    child.stdin?.end();
  });
}

describe('traffic script', () => {
  it.each([
    [['tcp-client', '8.8.8.8', '53', '--count', '1']],
    [['udp-client', '10.0.0.1', '53', '--sport', '40000', '--count', '1', '--interval-ms', '100']],
    [['tcp-syn', '198.20.0.1', '80', '--sport', '40000']],
  ])('refuses to send outside 198.18.0.0/15: %j', async (args) => {
    const res = await runScript(args);
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/only 198\.18\.0\.0\/15 lab addresses/);
    expect(res.stdout).toBe('');
  });

  it.each([
    [['udp-client', '198.18.0.1', '53', '--sport', '40000', '--count', '0', '--interval-ms', '100'], /--count must be an integer in \[1, 10000\]/],
    [['tcp-client', '198.18.0.1', '80', '--timeout-ms', '3600000'], /--timeout-ms must be an integer in \[1, 60000\]/],
    [['tcp-syn', '198.18.0.1', '80'], /tcp-syn needs --sport/],
    [['tcp-syn', '198.18.0.1', '80', '--sport', '1', '--src', '1.1.1.1'], /--src 1\.1\.1\.1 is not a lab address/],
    [['udp-client', '198.18.0.1', '53', '--count', '1', '--interval-ms', '100'], /--sport is required/],
    [['flood', '198.18.0.1', '80'], /unknown mode "flood"/],
  ])('refuses unbounded or incomplete arguments: %j', async (args, message) => {
    const res = await runScript(args);
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(message);
  });

  it("runs under the repository's Node 24", () => {
    expect(nodeBinary()).toMatch(/node_modules\/\.bin\/node$/);
  });
});

describe('parseAttempt', () => {
  it('reads an attempt line with the pod that answered', () => {
    expect(parseAttempt('{"kind":"udp","seq":3,"status":"ok","at":1700000000000,"ms":2,"pod":"coredns-a"}')).toEqual({
      kind: 'udp', seq: 3, status: 'ok', at: 1700000000000, ms: 2, pod: 'coredns-a',
    });
  });

  it.each([
    ['{"event":"done"}'],
    ['{"kind":"tcp","seq":1,"status":"lost","at":1,"ms":1}'],
    ['{"kind":"icmp","seq":1,"status":"ok","at":1,"ms":1}'],
    ['{"kind":"tcp","seq":"1","status":"ok","at":1,"ms":1}'],
    ['not json'],
    ['[1,2]'],
  ])('ignores %s', (line) => {
    expect(parseAttempt(line)).toBeUndefined();
  });
});

describe('parseServerEvent', () => {
  it('reads an accepted connection', () => {
    expect(parseServerEvent('{"event":"accept","peer":"198.19.1.10:52618","local":"198.19.2.10:80","at":5}')).toEqual({
      event: 'accept', peer: '198.19.1.10:52618', local: '198.19.2.10:80', at: 5,
    });
  });

  it('ignores the listening line', () => {
    expect(parseServerEvent('{"event":"listening","kind":"tcp","port":80,"name":"nginx"}')).toBeUndefined();
  });
});
