/*
 * xml_check.h - a small well-formedness check of the XML timeline.c writes
 * (the unit tests and the fuzz target share it): one optional <?xml ...?>
 * prolog, then one root element; every tag closed in order; attribute
 * values quoted with no '<'; '&' only as one of XML's five entities; no
 * control character but tab and newline; no comments, CDATA or DOCTYPE
 * (the renderer writes none).  Returns NULL, or what is wrong.
 */
#ifndef GODWIT_XML_CHECK_H
#define GODWIT_XML_CHECK_H

#include <ctype.h>
#include <stddef.h>
#include <string.h>

static inline int xml_entity_len(const char *p, const char *end)
{
	static const char *const ents[] = { "&amp;", "&lt;", "&gt;", "&quot;", "&apos;" };

	for (size_t i = 0; i < sizeof(ents) / sizeof(ents[0]); i++) {
		size_t n = strlen(ents[i]);

		if ((size_t)(end - p) >= n && !memcmp(p, ents[i], n))
			return (int)n;
	}
	return 0;
}

static inline int xml_name_char(char c)
{
	return isalnum((unsigned char)c) || c == '-' || c == '_' || c == ':' || c == '.';
}

static inline const char *xml_check(const char *s, size_t len, const char **root)
{
	const char *p = s, *end = s + len, *stack[64];
	size_t stn[64];
	int depth = 0, roots = 0;

	if (len >= 5 && !memcmp(p, "<?xml", 5)) {
		const char *q = strstr(p, "?>");

		if (!q || q >= end)
			return "unterminated prolog";
		p = q + 2;
	}
	while (p < end) {
		unsigned char c = (unsigned char)*p;

		if (c == '<') {
			int closing = p + 1 < end && p[1] == '/';
			const char *name = p + 1 + closing;
			size_t n = 0;

			while (name + n < end && xml_name_char(name[n]))
				n++;
			if (!n)
				return "a tag without a name";
			p = name + n;
			if (closing) {
				if (p >= end || *p != '>')
					return "a bad closing tag";
				if (!depth || stn[depth - 1] != n || memcmp(stack[depth - 1], name, n))
					return "a closing tag that does not match";
				depth--;
				p++;
				continue;
			}
			if (!depth && roots++)
				return "more than one root element";
			if (!depth && root)
				*root = name;
			/* Attributes: name="value". */
			for (;;) {
				while (p < end && (*p == ' ' || *p == '\n'))
					p++;
				if (p >= end)
					return "an unterminated tag";
				if (*p == '>' || (*p == '/' && p + 1 < end && p[1] == '>'))
					break;
				if (!xml_name_char(*p))
					return "a bad attribute name";
				while (p < end && xml_name_char(*p))
					p++;
				if (p + 1 >= end || p[0] != '=' || p[1] != '"')
					return "an attribute without a quoted value";
				for (p += 2; p < end && *p != '"'; p++) {
					if (*p == '<' || ((unsigned char)*p < 0x20 && *p != '\t'))
						return "a bad character in an attribute value";
					if (*p == '&') {
						int e = xml_entity_len(p, end);

						if (!e)
							return "a bare & in an attribute value";
						p += e - 1;
					}
				}
				if (p >= end)
					return "an unterminated attribute value";
				p++;
			}
			if (*p == '/') {
				p += 2;
				continue;
			}
			if (depth == 64)
				return "elements nested too deep";
			stack[depth] = name;
			stn[depth++] = n;
			p++;
			continue;
		}
		if (c == '&') {
			int e = xml_entity_len(p, end);

			if (!e)
				return "a bare & in text";
			p += e;
			continue;
		}
		if (c == '>')
			return "a bare > in text";
		if (c < 0x20 && c != '\n' && c != '\t')
			return "a control character";
		if (!depth && c != '\n' && c != ' ')
			return "text outside the root element";
		p++;
	}
	if (depth)
		return "an element left open";
	if (!roots)
		return "no root element";
	return NULL;
}

#endif
