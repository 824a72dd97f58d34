// Throwaway TLS material for tests, made with the openssl command: a CA, and
// a server certificate for 127.0.0.1 signed by it (what a cluster's own CA
// and a collector's or API server's certificate look like).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestCertificates {
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
}

export function makeCertificates(): TestCertificates {
  const dir = mkdtempSync(join(tmpdir(), 'conntrail-certs-'));
  const openssl = (args: string[]) => {
    try {
      execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { stderr?: Buffer };
      if (e.code === 'ENOENT') throw new Error('openssl not installed: run npm run setup');
      throw new Error(`openssl ${args[0]} failed: ${e.stderr?.toString() ?? e.message}`);
    }
  };
  try {
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    openssl(['req', '-x509', ...ec, '-days', '1', '-subj', '/CN=conntrail-test-ca', '-keyout', 'ca.key', '-out', 'ca.pem']);
    openssl(['req', ...ec, '-subj', '/CN=127.0.0.1', '-keyout', 'key.pem', '-out', 'server.csr']);
    writeFileSync(join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
    openssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '1', '-extfile', 'san.ext', '-out', 'cert.pem']);
    const read = (f: string) => readFileSync(join(dir, f), 'utf8');
    return { ca: read('ca.pem'), cert: read('cert.pem'), key: read('key.pem') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
