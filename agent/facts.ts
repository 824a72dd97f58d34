// Node facts come from systeminformation once at start and again when they
// change (an interface added, a kernel upgraded under a live node is rare but
// an address change is not).
import si from 'systeminformation';
import type { NodeFacts } from '../contract/records.ts';

export async function readNodeFacts(): Promise<NodeFacts> {
  const [os, cpu, mem, ifaces] = await Promise.all([si.osInfo(), si.cpu(), si.mem(), si.networkInterfaces()]);
  const list = Array.isArray(ifaces) ? ifaces : [ifaces];
  return {
    hostname: os.hostname,
    kernel: os.kernel,
    os: `${os.distro} ${os.release}`.trim(),
    arch: os.arch,
    cpus: cpu.cores,
    memoryBytes: mem.total,
    interfaces: list.map((i) => ({ name: i.iface, ip4: i.ip4, ip6: i.ip6, mac: i.mac, operstate: i.operstate })),
  };
}
