/* conftext: a config file's text before libconfig parses it: bounded reading, @include splicing
 * with a line map back to each file, and the scans libconfig 1.5 cannot do itself. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* A greeting daemon's config is a few hundred bytes; refuse to slurp anything absurd into memory.
 * The bound holds for the main file and for all of it with its includes spliced in. */
#define CONF_TEXT_SIZE_MAX (1024 * 1024)
/* libconfig's own limit; deeper nesting is almost certainly a file including itself. */
#define CONF_INCLUDE_DEPTH_MAX 10
#define CONF_INCLUDE_FILES_MAX 64
/* Brackets ('[', '(', '{') open at once: hellod's settings need two; the scans below track this
 * many, and conf_text_find_too_deep refuses a file that goes deeper. */
#define CONF_NESTING_MAX 64

/* Lines FIRST.. of the spliced text come from FILE, starting at its line FILE_LINE. */
typedef struct ConfSegment {
        unsigned first;
        unsigned file_line;
        const char *file; /* owned by the ConfText */
} ConfSegment;

/* ConfUnclosed: the outermost bracket ('[', '(' or '{') still open at the end of the text:
 * FILE opened it at LINE and ended at line AFTER of the spliced text; FILE NULL: none. */
typedef struct ConfUnclosed {
        const char *file;
        unsigned line;
        char what;
        unsigned after;
} ConfUnclosed;

/* ConfUnfinished: the first included file whose text ends inside a setting (after its name, or
 * its '=' or ':'), which libconfig finds only where the including file goes on: FILE, the LINE
 * of its last token, TEXT that line (blanks around taken away, cut), and AFTER the line of the
 * spliced text where the including file goes on; FILE NULL: none. */
typedef struct ConfUnfinished {
        const char *file;
        unsigned line;
        unsigned after;
        char text[72];
} ConfUnfinished;

typedef struct ConfText {
        char *text; /* NUL-terminated; no @include left in it */
        size_t size;
        ConfSegment *segs;
        size_t n_segs;
        char **files; /* every file name the segments point to */
        size_t n_files;
        unsigned last_line;      /* the text's last line (it ends in a newline) */
        unsigned main_last_line; /* the main file's: where libconfig's errors at the end of the
                                  * text are placed, not on the line past it (nor in a file the
                                  * main one includes last) */
        ConfUnclosed unclosed;     /* a bracket left open at the end of the text */
        ConfUnfinished unfinished; /* an included file that ends inside a setting */
} ConfText;

/* Why building failed: FILE (NULL: the main file) and LINE (0: none) and a message. FILE points
 * into the ConfText, which must outlive its use. */
typedef struct ConfTextError {
        const char *file;
        unsigned line;
        int r; /* -EINVAL for what the file says; -ENOMEM; -ENOENT etc. for the main file only */
        char message[320];
} ConfTextError;

/* conf_text_read: the main file PATH, whole: -ENOENT when it does not exist, -EISDIR for a
 * directory, -EINVAL for anything else that is not a regular file (a FIFO, a device), a NUL
 * byte or a file over the size bound (reason in ERR). */
int conf_text_read(const char *path, char **ret, size_t *ret_size, ConfTextError *err);

/* conf_text_build: NAME's TEXT (SIZE bytes, NUL-terminated) with every `@include "FILE"` line
 * replaced by FILE's text, recursively. FILE is absolute, or relative to NAME's directory; it
 * must be a readable regular file (never a FIFO or a device: opening one could block), within the
 * size, depth and count bounds. Returns 0, or a negative errno with ERR filled in. */
int conf_text_build(ConfText *t, const char *name, const char *text, size_t size, ConfTextError *err);
void conf_text_done(ConfText *t);

/* conf_text_locate: the file and line of line LINE of the spliced text. */
void conf_text_locate(const ConfText *t, unsigned line, const char **ret_file, unsigned *ret_line);

/* conf_text_string_line: the line of the spliced text where the string literal "VALUE"
 * written as it is (no escapes), outside comments, last begins at or before line LINE; 0
 * when there is none.
 * libconfig 1.5 gives a list entry the line of the token after it (the closing bracket's for
 * the last entry of a list written one entry a line): this finds the entry's own. */
unsigned conf_text_string_line(const ConfText *t, unsigned line, const char *value);

/* What libconfig reads without an error and gets wrong: the setting it is in, the text. */
typedef struct ConfSpot {
        const char *key, *text, *next; /* into the ConfText, not NUL-terminated */
        const char *token;             /* where the token found begins (the scans that refuse) */
        size_t key_len, text_len, next_len;
        unsigned line;      /* of the spliced text */
        unsigned next_line; /* where NEXT is (conf_text_find_trailing_comma) */
} ConfSpot;

/* conf_text_find_wide: an integer literal wider than libconfig 1.5's int, which it would
 * silently truncate. */
bool conf_text_find_wide(const ConfText *t, ConfSpot *ret);

/* conf_text_find_too_deep: the first bracket ('[', '(' or '{') open inside CONF_NESTING_MAX
 * others; the text is the bracket. Run first: the other scans track that many. */
bool conf_text_find_too_deep(const ConfText *t, ConfSpot *ret);

/* conf_text_find_stray_string: a string literal where libconfig's grammar has none (after a
 * name without '=', after a value, at the start of a setting): a syntax error, which
 * libconfig 1.5 reports without freeing the string (a failed reload would leak it each time).
 * The text is the string's, within its quotes; no key. */
bool conf_text_find_stray_string(const ConfText *t, ConfSpot *ret);

/* conf_text_find_joined: two string literals with nothing between them in a list ('[ ]' or
 * '( )'), which libconfig joins into one entry where a ',' was surely forgotten: the key is the
 * list's, the text the first string's and next the second's (within their quotes), the line the
 * second's. */
bool conf_text_find_joined(const ConfText *t, ConfSpot *ret);

/* conf_text_find_trailing_comma: a ',' after the last entry of a list or array (after a value,
 * before its ']' or ')'), which libconfig 1.5 calls a syntax error on the bracket's line: the text is the
 * comma, NEXT the bracket, the key the list's (none, key_len 0, outside any setting). */
bool conf_text_find_trailing_comma(const ConfText *t, ConfSpot *ret);

/* conf_text_line: line LINE of the spliced text, without its newline (*RET_LEN bytes); empty
 * past the end. */
const char *conf_text_line(const ConfText *t, unsigned line, size_t *ret_len);

/* conf_text_duplicate: the name of a setting given twice in the same group whose second
 * occurrence is on LINE (where libconfig reports "duplicate setting name"), into BUF; and the
 * line of its first occurrence. False when none is found. */
bool conf_text_duplicate(const ConfText *t, unsigned line, char *buf, size_t size, unsigned *ret_first);
