// Every parser by source name, for `conntrail parse` and `replay`.
import type { ParseResult, RecordOf, SourceName } from '../contract/sources.ts';
import { parseAddrs } from './sources/addrs.ts';
import { parseConntrack } from './sources/conntrack.ts';
import { parseConntrackStat } from './sources/conntrack-stat.ts';
import { parseIpset } from './sources/ipset.ts';
import { parseIptables } from './sources/iptables.ts';
import { parseIpvs } from './sources/ipvs.ts';
import { parseIpvsConn } from './sources/ipvs-conn.ts';
import { parseLinks } from './sources/links.ts';
import { parseNft } from './sources/nft.ts';
import { parseRoutes } from './sources/routes.ts';
import { parseRules } from './sources/rules.ts';
import { parseSysctl } from './sources/sysctl.ts';

export const parsers: { readonly [N in SourceName]: (text: string) => ParseResult<RecordOf<N>> } = {
  iptables: (t) => parseIptables(t),
  nft: parseNft,
  ipvs: parseIpvs,
  'ipvs-conn': parseIpvsConn,
  ipset: parseIpset,
  conntrack: parseConntrack,
  routes: (t) => parseRoutes(t),
  addrs: parseAddrs,
  links: parseLinks,
  rules: (t) => parseRules(t),
  sysctl: parseSysctl,
  'conntrack-stat': parseConntrackStat,
  'rt-cache-stat': parseConntrackStat,
};
