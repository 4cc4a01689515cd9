# Regenerates src/text/unicode_entities.c (the HTML5 named character references) from Python's html.entities.
# Usage: python3 scripts/gen_html_entities.py > src/text/unicode_entities.c
import html, html.entities as h
def cstr(s):
    out = ''
    esc = False
    for b in s.encode('utf-8'):
        if b < 0x20 or b >= 0x7f or chr(b) in '"\\?':
            out += '\\x%02x' % b
            esc = True
        else:
            if esc and chr(b) in '0123456789abcdefABCDEF':
                out += '""'
            out += chr(b)
            esc = False
    return '"' + out + '"'
names = sorted(h.html5.keys(), key=lambda k: k.encode())
up = {}
for n, v in h.html5.items():
    if n.endswith(';') and n == n.lower():
        u = '&' + n.upper()
        if html.unescape(u) == u:
            up[n.upper()] = v.upper()
upn = sorted(up, key=lambda k: k.encode())
print('/* HTML5 named character references (WHATWG list, as Python 3.11 html.entities.html5 holds it),')
print(' * sorted by name bytes for binary search. Generated: names, then the upper-cased aliases ftfy')
print(' * also decodes (a lower-case name whose upper-case spelling is no entity of its own). */')
print('#include "text/unicode.h"\n')
print('const sdxl_html_entity sdxl_html_entities[] = {')
for n in names: print('    {%s, %s},' % (cstr(n), cstr(h.html5[n])))
print('};')
print('const size_t sdxl_html_entities_n = sizeof sdxl_html_entities / sizeof sdxl_html_entities[0];\n')
print('const sdxl_html_entity sdxl_html_entities_upper[] = {')
for n in upn: print('    {%s, %s},' % (cstr(n), cstr(up[n])))
print('};')
print('const size_t sdxl_html_entities_upper_n = sizeof sdxl_html_entities_upper / sizeof sdxl_html_entities_upper[0];')
