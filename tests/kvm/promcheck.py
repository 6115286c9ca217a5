#!/usr/bin/python3
"""promcheck.py FILE - checks a GET /metrics page (the Prometheus text format
0.0.4) and prints its samples as JSON: [{"name", "labels", "value"}, ...].

Run with Debian's python3 (/usr/bin/python3), which has python3-prometheus-client:
its parser (prometheus_client.parser, the Python client's reading of the same
format) must accept the whole page, and on top of that, line by line:
every family has exactly one "# HELP" and one "# TYPE", both before its
samples; a family's samples are contiguous; no family or (name, labels) sample
comes twice; names are godwit_*; counters end in _total and nothing else does;
units are base units (no _ms, _milliseconds, _kib, _mib..., no _percent);
values are numbers.  Exits 1 with every problem on stderr.
"""
import json
import math
import re
import sys

from prometheus_client.parser import text_string_to_metric_families

NAME = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*$')
BAD_UNITS = re.compile(r'_(ms|msec|milliseconds|us|microseconds|ns|nanoseconds|minutes|hours|'
                       r'kb|kib|mb|mib|gb|gib|bits|percent)(_|$)')
SUFFIXES = {'summary': ('_sum', '_count'), 'histogram': ('_bucket', '_sum', '_count')}


def main():
    text = open(sys.argv[1], encoding='utf-8').read()
    errors = []
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser raises ValueError and others
        print('promcheck: the parser refused the page: %r' % e, file=sys.stderr)
        return 1
    if not text.endswith('\n') and text:
        errors.append('the page does not end with a newline')

    help_of, type_of, done, samples, seen = {}, {}, set(), [], set()
    current = None
    for n, line in enumerate(text.split('\n')[:-1], 1):
        if line.startswith('# HELP ') or line.startswith('# TYPE '):
            kind, rest = line[2:6], line[7:]
            name = rest.split(' ', 1)[0]
            table = help_of if kind == 'HELP' else type_of
            if name in table:
                errors.append('line %d: a second # %s for %s' % (n, kind, name))
            if name in done:
                errors.append('line %d: # %s for %s after its samples' % (n, kind, name))
            table[name] = rest[len(name) + 1:]
            if current and current != name:
                done.add(current)
            current = name
            continue
        if not line or line.startswith('#'):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)', line)
        if not m:
            errors.append('line %d: no metric name: %r' % (n, line))
            continue
        sname = m.group(1)
        fam = sname
        for t, sufs in SUFFIXES.items():
            for s in sufs:
                base = sname[:-len(s)]
                if sname.endswith(s) and type_of.get(base) == t:
                    fam = base
        if fam not in help_of or fam not in type_of:
            errors.append('line %d: %s has no # HELP and # TYPE before it' % (n, sname))
        if fam in done:
            errors.append('line %d: samples of %s are not contiguous' % (n, fam))
        if current and current != fam:
            done.add(current)
        current = fam

    for fam in families:
        name = fam.name
        # The client library strips _total from a counter's family name.
        full = name + '_total' if fam.type == 'counter' else name
        if not NAME.match(full) or not full.startswith('godwit_'):
            errors.append('%s: not a godwit_* name' % full)
        if fam.type == 'counter' and full not in type_of:
            errors.append('%s: a counter not named *_total' % name)
        if fam.type != 'counter' and full.endswith('_total'):
            errors.append('%s: a %s named *_total' % (full, fam.type))
        if fam.type not in ('counter', 'gauge', 'summary'):
            errors.append('%s: type %s' % (full, fam.type))
        if BAD_UNITS.search(full):
            errors.append('%s: not in base units (seconds, bytes)' % full)
        if not fam.documentation:
            errors.append('%s: empty HELP' % full)
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            if key in seen:
                errors.append('%s%s: sample given twice' % (s.name, s.labels))
            seen.add(key)
            v = s.value
            if fam.type == 'counter' and not (v >= 0 and not math.isinf(v)):
                errors.append('%s%s: counter value %r' % (s.name, s.labels, v))
            samples.append({'name': s.name, 'labels': s.labels,
                            'value': v if math.isfinite(v) else str(v)})
    for name in set(help_of) | set(type_of):
        if name not in help_of or name not in type_of:
            errors.append('%s: # HELP or # TYPE missing' % name)
    for e in errors:
        print('promcheck: ' + e, file=sys.stderr)
    if errors:
        return 1
    json.dump(samples, sys.stdout)
    print()
    return 0


if __name__ == '__main__':
    sys.exit(main())
