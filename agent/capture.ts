// Triggered capture: when an incident opens, the collector asks the agents on
// the nodes involved to record, for a bounded time, `tcpdump -l -nn` filtered
// to the incident's addresses and ports, and `conntrack -E` events touching
// those addresses. Both run under a pseudo-terminal (node-pty) so they stream
// line by line and stop cleanly on SIGINT. Only this fixed pair of commands
// ever runs; the request carries validated addresses and ports, never a
// command line.
import { accessSync, constants, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { spawn } from 'node-pty';
import { MAX_PCAP_BYTES, type CaptureRequest, type CaptureTool } from '../contract/protocol.ts';

export interface CaptureSink {
  lines(tool: CaptureTool, lines: string[]): void;
  end(tool: CaptureTool, error: string | null): void;
  pcap(bytes: Buffer): void;
}

/** tcpdump's filter for the request: `(host A or host B) and (port P or port Q)`, as separate argv words. */
export function tcpdumpArgs(req: Pick<CaptureRequest, 'hosts' | 'ports'>): string[] {
  const args = ['-l', '-nn', '-i', 'any'];
  const hosts = req.hosts.flatMap((h, i) => (i === 0 ? ['host', h] : ['or', 'host', h]));
  const ports = req.ports.flatMap((p, i) => (i === 0 ? ['port', String(p)] : ['or', 'port', String(p)]));
  if (hosts.length > 0) args.push('(', ...hosts, ')');
  if (hosts.length > 0 && ports.length > 0) args.push('and');
  if (ports.length > 0) args.push('(', ...ports, ')');
  return args;
}

function which(cmd: string): string | null {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    try {
      accessSync(join(dir, cmd), constants.X_OK);
      return join(dir, cmd);
    } catch {
      // keep looking
    }
  }
  return null;
}

/** Lines per tool a capture keeps; the rest are counted in a last line. */
const MAX_LINES = 20_000;

export function runCapture(req: CaptureRequest, sink: CaptureSink): Promise<void> {
  // tcpdump writes the packets to a pcap and, with --print, prints them as well.
  const dir = mkdtempSync(join(tmpdir(), 'conntrail-capture-'));
  const pcapPath = join(dir, 'capture.pcap');
  const [first, ...rest] = tcpdumpArgs(req);
  const tools: { tool: CaptureTool; cmd: string; args: string[]; keep: (line: string) => boolean }[] = [
    { tool: 'tcpdump', cmd: 'tcpdump', args: [first ?? '-l', '-w', pcapPath, '--print', ...rest], keep: () => true },
    // conntrack -E cannot OR several addresses in one filter; the lines are filtered here instead.
    { tool: 'conntrack-events', cmd: 'conntrack', args: ['-E', '-o', 'timestamp'], keep: (l) => req.hosts.some((h) => l.includes(`=${h} `)) },
  ];
  return Promise.all(tools.map((t) => runOne(t, req.durationMs, sink))).then(() => {
    try {
      const bytes = readFileSync(pcapPath);
      // Over the bound the printed lines still stand; the pcap is left out rather than cut.
      if (bytes.length > 0 && bytes.length <= MAX_PCAP_BYTES) sink.pcap(bytes);
    } catch {
      // tcpdump missing or never started: its end message already said why.
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

function runOne(t: { tool: CaptureTool; cmd: string; args: string[]; keep: (line: string) => boolean }, durationMs: number, sink: CaptureSink): Promise<void> {
  const path = which(t.cmd);
  if (path === null) {
    sink.end(t.tool, `${t.cmd} is not installed on this node`);
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const proc = spawn(path, t.args, { name: 'dumb', cols: 400, rows: 24, env: { ...process.env, LC_ALL: 'C' } });
    let partial = '';
    let kept = 0;
    let dropped = 0;
    let batch: string[] = [];
    const flush = () => {
      if (batch.length > 0) sink.lines(t.tool, batch);
      batch = [];
    };
    const flushTimer = setInterval(flush, 250);
    proc.onData((data) => {
      const parts = (partial + data).split(/\r?\n/);
      partial = parts.pop() ?? '';
      for (const line of parts) {
        if (line === '' || !t.keep(line)) continue;
        if (kept >= MAX_LINES) {
          dropped++;
          continue;
        }
        kept++;
        batch.push(line);
      }
    });
    const stop = setTimeout(() => proc.kill('SIGINT'), durationMs);
    // A tool that ignores SIGINT is killed a little later.
    const hardStop = setTimeout(() => proc.kill('SIGKILL'), durationMs + 3_000);
    proc.onExit(({ exitCode, signal }) => {
      clearTimeout(stop);
      clearTimeout(hardStop);
      clearInterval(flushTimer);
      if (partial !== '' && t.keep(partial)) batch.push(partial);
      if (dropped > 0) batch.push(`# conntrail: ${dropped} more lines not kept (limit ${MAX_LINES})`);
      flush();
      const interrupted = signal === 2 || exitCode === 0 || exitCode === 130;
      sink.end(t.tool, interrupted ? null : `${t.cmd} exited with ${exitCode}${signal ? ` (signal ${signal})` : ''}`);
      resolve();
    });
  });
}
