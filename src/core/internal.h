/* Library-internal helpers of src/core (not public API): telling an out-of-memory cJSON parse from
 * bad text (json_valid.c) and the directory fsync after an atomic rename (util.c). */
#ifndef TAPER_CORE_INTERNAL_H
#define TAPER_CORE_INTERNAL_H

#include <stddef.h>

/* cJSON returns NULL both when the text is malformed and when it runs out of memory; a loader
 * that reports "malformed" for an out-of-memory parse, or worse skips the file as damaged (a
 * checkpoint would fall back to an older one), misleads. After a failed parse:
 * tp_json_valid(text, len) ? TP_ERR_NOMEM : TP_ERR_FORMAT. */

/* 1 when text[0..len) is JSON that cJSON_ParseWithLength accepts; allocates nothing. It accepts
 * only what cJSON accepts (RFC 8259 values, except that, as in cJSON, control bytes other than
 * NUL may stand in strings and bytes 1..32 count as whitespace; nesting up to 500, numbers up to
 * 63 characters, paired surrogate escapes; an optional UTF-8 BOM; anything after the value, which
 * cJSON ignores), so a 1 never blames the memory for a malformed text. */
int tp_json_valid(const char *text, size_t len);

/* fsync of the directory holding path, so that a rename into it is durable. Best effort, and it
 * allocates nothing: it runs once the file is in place, where running out of memory must neither
 * fail a completed write nor skip the fsync. */
void tp_fsync_parent_dir(const char *path);

#endif
