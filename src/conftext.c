/* conftext: a config file's text before libconfig parses it.
 *
 * libconfig 1.5 (Debian 12) opens @include files itself: a directory makes its flex scanner call
 * exit(), a FIFO blocks it forever, and it cannot be told not to (config_set_include_func() came
 * in 1.7). So libconfig never sees an @include: every `@include "FILE"` line is replaced here by
 * the text of FILE, read with the same bounds as the main file, and a line map turns a line of the
 * spliced text back into the file and line a message must name. */
#include "conftext.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ascii.h"

static int text_error(ConfTextError *err, int r, const char *file, unsigned line, const char *format, ...)
        __attribute__((format(printf, 5, 6)));
static int text_error(ConfTextError *err, int r, const char *file, unsigned line, const char *format, ...) {
        va_list ap;

        err->file = file;
        err->line = line;
        err->r = r;
        va_start(ap, format);
        (void) vsnprintf(err->message, sizeof(err->message), format, ap);
        va_end(ap);
        return r;
}

/* ---- tokens ---- */

/* Just enough of libconfig's lexical rules to know what is a name, a number, a string or a
 * comment: the text has been (or will be) checked by libconfig itself. */
typedef enum TokType {
        TOK_END,
        TOK_NAME,
        TOK_NUMBER,
        TOK_STRING,
        TOK_PUNCT,
} TokType;

typedef struct Token {
        TokType type;
        const char *start;
        size_t len;
        unsigned line;
        bool line_start; /* only blanks before it on its line */
} Token;

typedef struct Scanner {
        const char *p;
        const char *bol; /* where the current line begins */
        unsigned line;
        unsigned open_line;    /* where a string or block comment that runs to the end opens; 0: none */
        const char *open_what; /* "string" or "comment" */
        unsigned nul_line;     /* the first line with a "\x00" (or "\X00") in a string; 0: none */
} Scanner;

static void scanner_init(Scanner *sc, const char *text) {
        *sc = (Scanner) { .p = text, .bol = text, .line = 1 };
}

static void newline_at(Scanner *sc, const char *p) {
        sc->line++;
        sc->bol = p + 1;
}

static Token scan_next(Scanner *sc) {
        for (;;) {
                const char *p = sc->p, *q;
                Token t = { .start = p, .line = sc->line };

                if (!*p)
                        return (Token) { .type = TOK_END, .start = p, .line = sc->line };
                if (*p == '\n') {
                        newline_at(sc, p);
                        sc->p = p + 1;
                        continue;
                }
                if (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\f' || *p == '\v') {
                        sc->p = p + 1;
                        continue;
                }
                if (*p == '#' || (p[0] == '/' && p[1] == '/')) {
                        sc->p = p + strcspn(p, "\n");
                        continue;
                }
                if (p[0] == '/' && p[1] == '*') {
                        for (q = p + 2; *q && !(q[0] == '*' && q[1] == '/'); q++)
                                if (*q == '\n')
                                        newline_at(sc, q);
                        if (!*q) {
                                sc->open_line = t.line;
                                sc->open_what = "comment";
                        }
                        sc->p = *q ? q + 2 : q;
                        continue;
                }

                t.line_start = strspn(sc->bol, " \t") >= (size_t) (p - sc->bol);
                if (*p == '"') {
                        for (q = p + 1; *q && *q != '"'; q++) {
                                if (q[0] == '\\' && (q[1] == 'x' || q[1] == 'X') && q[2] == '0' && q[3] == '0' && !sc->nul_line)
                                        sc->nul_line = sc->line;
                                if (*q == '\\' && q[1])
                                        q++;
                                if (*q == '\n')
                                        newline_at(sc, q);
                        }
                        if (!*q) {
                                sc->open_line = t.line;
                                sc->open_what = "string";
                        }
                        q = *q ? q + 1 : q;
                        t.type = TOK_STRING;
                } else if (is_ascii_alpha(*p) || *p == '*') {
                        q = p + strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_*-");
                        t.type = TOK_NAME;
                } else if (is_ascii_digit(*p) || *p == '-' || *p == '+' || *p == '.') {
                        q = p + strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.+-");
                        t.type = TOK_NUMBER;
                } else {
                        q = p + 1;
                        t.type = TOK_PUNCT;
                }
                t.len = (size_t) (q - p);
                sc->p = q;
                return t;
        }
}

static bool is_punct(const Token *t, char c) {
        return t->type == TOK_PUNCT && t->start[0] == c;
}

/* opens, closes: a bracket of a list, an array or a group. */
static bool opens(const Token *t) {
        return t->type == TOK_PUNCT && strchr("[({", t->start[0]);
}

static bool closes(const Token *t) {
        return t->type == TOK_PUNCT && strchr("])}", t->start[0]);
}

/* ---- reading ---- */

/* read_fd: all of FD, NUL-terminated, at most LIMIT bytes. */
static int read_fd(int fd, size_t limit, char **ret, size_t *ret_size) {
        size_t size = 0, alloc = 4096;
        char *buf = malloc(alloc);

        if (!buf)
                return -ENOMEM;
        for (;;) {
                ssize_t n;

                if (size + 1 >= alloc) {
                        char *p;

                        if (alloc > limit) {
                                free(buf);
                                return -EFBIG;
                        }
                        p = realloc(buf, alloc * 2);
                        if (!p) {
                                free(buf);
                                return -ENOMEM;
                        }
                        buf = p;
                        alloc *= 2;
                }
                n = read(fd, buf + size, alloc - size - 1);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        int r = -errno;
                        free(buf);
                        return r;
                }
                if (n == 0)
                        break;
                size += (size_t) n;
        }
        if (size > limit) {
                free(buf);
                return -EFBIG;
        }
        buf[size] = '\0';
        *ret = buf;
        *ret_size = size;
        return 0;
}

/* dangling_link_on: whether PATH or a directory on its way is a symbolic link whose target
 * does not exist; that one into BUF. */
static bool dangling_link_on(const char *path, char *buf, size_t size) {
        struct stat st;

        if (snprintf(buf, size, "%s", path) >= (int) size)
                return false;
        for (;;) {
                if (lstat(buf, &st) == 0 && S_ISLNK(st.st_mode) && stat(buf, &st) < 0 && errno == ENOENT)
                        return true;
                char *slash = strrchr(buf, '/');
                if (!slash || slash == buf)
                        return false;
                *slash = '\0';
        }
}

int conf_text_read(const char *path, char **ret, size_t *ret_size, ConfTextError *err) {
        char msg[128], dangling[PATH_MAX];
        struct stat st;
        int fd, r;

        /* As for @include, only a regular file is read: O_NONBLOCK, for a FIFO at the path must
         * not hang a reload (and the watchdog with it) until a writer comes. A directory opens
         * fine and fails in read() with EISDIR, which is the message we want. */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                r = -errno;
        else if (fstat(fd, &st) < 0)
                r = -errno;
        else if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
                r = -ENOTSUP;
        else
                r = read_fd(fd, CONF_TEXT_SIZE_MAX, ret, ret_size);
        if (fd >= 0)
                (void) close(fd);
        /* A symbolic link to nothing, the file's or a directory's on its way, is a mistake to
         * show, not an absent file: the default path read as absent runs hellod on built-in
         * defaults (every address, no access list). */
        if (r == -ENOENT && dangling_link_on(path, dangling, sizeof(dangling)))
                return strcmp(dangling, path) == 0
                               ? text_error(err, -EINVAL, NULL, 0, "a symbolic link to a file that does not exist")
                               : text_error(err, -EINVAL, NULL, 0, "%s is a symbolic link to nothing", dangling);
        if (r == -ENOTSUP)
                return text_error(err, -EINVAL, NULL, 0, "is not a regular file");
        if (r == -EFBIG)
                return text_error(err, -EINVAL, NULL, 0, "file is larger than %d bytes", CONF_TEXT_SIZE_MAX);
        if (r < 0)
                return text_error(err, r, NULL, 0, "%s", strerror_r(-r, msg, sizeof(msg)));
        return 0;
}

/* ---- splicing ---- */

/* Brackets: those open at this point of the spliced text, whichever file opened them (a list
 * may open around an @include and close after it): where each of the outermost ones opens and,
 * once its file has ended, the line of the spliced text where that file ended. */
#define BRACKETS_KEPT 16
typedef struct OpenBracket {
        const char *file;
        unsigned line;
        char what;
        unsigned file_end; /* 0: its file goes on */
} OpenBracket;

typedef struct Brackets {
        unsigned depth;
        OpenBracket open[BRACKETS_KEPT]; /* deeper ones are counted only */
} Brackets;

typedef struct Builder {
        ConfText *t;
        size_t alloc, segs_alloc;
        unsigned line; /* the line of the spliced text being written */
        char *dir;     /* where relative include names start */
        ConfTextError *err;
        Brackets brackets;
} Builder;

static void brackets_see(Brackets *k, const char *file, const Token *t) {
        if (opens(t)) {
                if (k->depth < BRACKETS_KEPT)
                        k->open[k->depth] = (OpenBracket) { .file = file, .line = t->line, .what = t->start[0] };
                k->depth++;
        } else if (closes(t) && k->depth > 0) /* one never opened: libconfig's to judge */
                k->depth--;
}

/* brackets_file_ended: FILE has ended at line END of the spliced text. */
static void brackets_file_ended(Brackets *k, const char *file, unsigned end) {
        for (unsigned i = 0; i < k->depth && i < BRACKETS_KEPT; i++)
                if (k->open[i].file == file && k->open[i].file_end == 0)
                        k->open[i].file_end = end;
}

static int emit(Builder *b, const char *s, size_t n) {
        ConfText *t = b->t;

        if (t->size + n > CONF_TEXT_SIZE_MAX)
                return text_error(b->err, -EINVAL, NULL, 0, "with its includes, the configuration is larger than %d bytes",
                                  CONF_TEXT_SIZE_MAX);
        if (t->size + n + 1 > b->alloc) {
                size_t alloc = b->alloc ? b->alloc : 4096;
                char *p;

                while (alloc < t->size + n + 1)
                        alloc *= 2;
                p = realloc(t->text, alloc);
                if (!p)
                        return text_error(b->err, -ENOMEM, NULL, 0, "out of memory");
                t->text = p;
                b->alloc = alloc;
        }
        memcpy(t->text + t->size, s, n);
        t->size += n;
        t->text[t->size] = '\0';
        for (size_t i = 0; i < n; i++)
                b->line += s[i] == '\n';
        return 0;
}

static int add_seg(Builder *b, unsigned file_line, const char *file) {
        ConfText *t = b->t;

        if (t->n_segs == b->segs_alloc) {
                size_t alloc = b->segs_alloc ? b->segs_alloc * 2 : 8;
                ConfSegment *p = realloc(t->segs, alloc * sizeof(*p));

                if (!p)
                        return text_error(b->err, -ENOMEM, NULL, 0, "out of memory");
                t->segs = p;
                b->segs_alloc = alloc;
        }
        t->segs[t->n_segs++] = (ConfSegment) { .first = b->line, .file_line = file_line, .file = file };
        return 0;
}

/* first_nul_line: the line of TEXT's first NUL (the one that ends it as a C string). */
static unsigned first_nul_line(const char *text) {
        unsigned line = 1;

        for (const char *p = text; *p; p++)
                line += *p == '\n';
        return line;
}

/* printable: NAME for a message, with anything but printable ASCII shown as '?'. */
static const char *printable(const char *name, char *buf, size_t size) {
        size_t i;

        for (i = 0; name[i] && i + 1 < size; i++)
                buf[i] = (unsigned char) name[i] < 0x20 || (unsigned char) name[i] >= 0x7f ? '?' : name[i];
        buf[i] = '\0';
        if (name[i] && i >= 3) /* cut: say so */
                memcpy(buf + i - 3, "...", 3);
        return buf;
}

/* parse_directive: `@include "NAME"` at P, then only blanks or a comment to the end of the line.
 * *RET_END: the '\n' or NUL ending the line. */
static int parse_directive(Builder *b, const char *file, unsigned line, const char *p, char **ret_name,
                           const char **ret_end) {
        const char *q = p + strlen("@include"), *name, *end;
        size_t n;

        if (strncmp(p, "@include", strlen("@include")) != 0 || (*q != ' ' && *q != '\t'))
                return text_error(b->err, -EINVAL, file, line,
                                  "'@' outside a string: only a line @include \"FILE\" is understood");
        q += strspn(q, " \t");
        if (*q != '"')
                return text_error(b->err, -EINVAL, file, line, "@include: expected a file name in double quotes");
        name = ++q;
        n = strcspn(name, "\"\\\n");
        if (name[n] != '"')
                return text_error(b->err, -EINVAL, file, line,
                                  "@include: the file name must be one line, in double quotes, without '\\'");
        if (n == 0)
                return text_error(b->err, -EINVAL, file, line, "@include: empty file name");
        for (size_t i = 0; i < n; i++)
                if ((unsigned char) name[i] < 0x20 || name[i] == 0x7f)
                        return text_error(b->err, -EINVAL, file, line,
                                          "@include: control character in the file name");
        end = name + n + 1;
        end += strspn(end, " \t\r");
        if (*end == '#' || (end[0] == '/' && end[1] == '/'))
                end += strcspn(end, "\n");
        if (*end != '\n' && *end != '\0')
                return text_error(b->err, -EINVAL, file, line, "@include \"%.*s\": must be alone on its line",
                                  (int) n, name);
        *ret_name = strndup(name, n);
        if (!*ret_name)
                return text_error(b->err, -ENOMEM, NULL, 0, "out of memory");
        *ret_end = end;
        return 0;
}

static int splice_text(Builder *b, const char *file, const char *text, unsigned depth);

/* include: NAME, as written on LINE of FILE, read and spliced in. */
static int include(Builder *b, const char *file, unsigned line, const char *name, unsigned depth) {
        char shown[256], msg[128], *path = NULL, *text = NULL;
        const char *why = NULL;
        size_t size = 0;
        struct stat st;
        int fd = -1, r;

        printable(name, shown, sizeof(shown));
        if (depth > CONF_INCLUDE_DEPTH_MAX)
                return text_error(b->err, -EINVAL, file, line,
                                  "@include \"%s\": more than %d nested includes (does a file include itself?)",
                                  shown, CONF_INCLUDE_DEPTH_MAX);
        if (b->t->n_files >= CONF_INCLUDE_FILES_MAX + 1)
                return text_error(b->err, -EINVAL, file, line, "@include \"%s\": more than %d included files",
                                  shown, CONF_INCLUDE_FILES_MAX);
        if (name[0] == '/')
                path = strdup(name);
        else if (asprintf(&path, "%s/%s", b->dir, name) < 0)
                path = NULL;
        if (!path)
                return text_error(b->err, -ENOMEM, NULL, 0, "out of memory");

        /* O_NONBLOCK: opening a FIFO must not wait for a writer; only regular files are read. */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                why = strerror_r(errno, msg, sizeof(msg));
        else if (fstat(fd, &st) < 0)
                why = strerror_r(errno, msg, sizeof(msg));
        else if (S_ISDIR(st.st_mode))
                why = "is a directory, not a file";
        else if (!S_ISREG(st.st_mode))
                why = "is not a regular file";
        else if ((r = read_fd(fd, CONF_TEXT_SIZE_MAX, &text, &size)) < 0)
                why = r == -EFBIG ? "file is too large" : strerror_r(-r, msg, sizeof(msg));
        else if (strlen(text) != size) {
                snprintf(msg, sizeof(msg), "NUL byte on its line %u", first_nul_line(text));
                why = msg;
        }
        if (fd >= 0)
                (void) close(fd);
        if (why) {
                char resolved[256];

                /* The reason before the resolved path, which a long name could push it out. */
                r = text_error(b->err, -EINVAL, file, line, "@include \"%s\": %s%s%s%s", shown, why,
                               name[0] == '/' ? "" : " (", name[0] == '/' ? "" : printable(path, resolved, sizeof(resolved)),
                               name[0] == '/' ? "" : ")");
                free(path);
                free(text);
                return r;
        }

        b->t->files[b->t->n_files++] = path;
        r = splice_text(b, path, text, depth);
        free(text);
        return r;
}

/* The UTF-8 byte order mark some editors put first: no text of the file, and libconfig would
 * call it a syntax error on line 1. */
#define UTF8_BOM "\xef\xbb\xbf"

/* ends_inside_setting: whether a file whose last tokens are BEFORE and LAST ends inside a
 * setting: after its '=' or ':', or after a name that is no value (not after '=', ':', ',',
 * '[' or '('): libconfig lets a setting's ';' out, not the rest. */
static bool ends_inside_setting(const Token *before, const Token *last) {
        if (is_punct(last, '=') || is_punct(last, ':'))
                return true;
        return last->type == TOK_NAME && !is_punct(before, '=') && !is_punct(before, ':') && !is_punct(before, ',') &&
               !is_punct(before, '[') && !is_punct(before, '(');
}

/* note_unfinished: FILE (TEXT), included, ended inside a setting at LAST, the including file
 * going on at line AFTER of the spliced text. */
static void note_unfinished(ConfText *t, const char *file, const char *text, const Token *last, unsigned after) {
        const char *bol = last->start, *eol = last->start + strcspn(last->start, "\n");

        while (bol > text && bol[-1] != '\n')
                bol--;
        bol += strspn(bol, " \t");
        while (eol > bol && strchr(" \t\r", eol[-1]))
                eol--;
        char shown[256];
        size_t n = (size_t) (eol - bol) < sizeof(shown) - 1 ? (size_t) (eol - bol) : sizeof(shown) - 1;

        memcpy(shown, bol, n);
        shown[n] = '\0';
        t->unfinished = (ConfUnfinished) { .file = file, .line = last->line, .after = after };
        printable(shown, t->unfinished.text, sizeof(t->unfinished.text));
}

/* splice: TEXT of FILE onto the output, its @include lines replaced. */
static int splice_text(Builder *b, const char *file, const char *text, unsigned depth) {
        Scanner sc;
        Token tk, last = { .type = TOK_END }, before = { .type = TOK_END };
        int r;

        if (strncmp(text, UTF8_BOM, strlen(UTF8_BOM)) == 0)
                text += strlen(UTF8_BOM);
        const char *copied = text;
        r = add_seg(b, 1, file);
        if (r < 0)
                return r;
        scanner_init(&sc, text);
        while ((tk = scan_next(&sc)).type != TOK_END) {
                const char *end = NULL, *bol = sc.bol;
                char *name = NULL;

                brackets_see(&b->brackets, file, &tk);
                if (!is_punct(&tk, '@')) {
                        before = last;
                        last = tk;
                        continue;
                }
                last = before = (Token) { .type = TOK_END }; /* the include's text is its own */
                if (!tk.line_start)
                        return text_error(b->err, -EINVAL, file, tk.line,
                                          "'@' outside a string: only a line @include \"FILE\" is understood");
                r = parse_directive(b, file, tk.line, tk.start, &name, &end);
                if (r >= 0)
                        r = emit(b, copied, (size_t) (bol - copied));
                if (r >= 0)
                        r = include(b, file, tk.line, name, depth + 1);
                free(name);
                if (r < 0)
                        return r;
                if (*end == '\n') {
                        newline_at(&sc, end);
                        end++;
                }
                sc.p = copied = end;
                r = add_seg(b, sc.line, file);
                if (r < 0)
                        return r;
        }
        /* libconfig would take a comment left open as the end of the file, in silence, and
         * report a string left open at the line past the end: hellod names where it opens. */
        if (sc.open_line != 0)
                return text_error(b->err, -EINVAL, file, sc.open_line, "a %s opened here runs to the end of the file",
                                  sc.open_what);
        /* libconfig drops a NUL byte from a string in silence ("a\x00b" and "a\X00b" are "ab"). */
        if (sc.nul_line != 0)
                return text_error(b->err, -EINVAL, file, sc.nul_line, "\\x00 in a string: a string cannot hold a NUL byte");
        r = emit(b, copied, strlen(copied));
        /* Whatever follows an included file starts on a line of its own; and a file that ends
         * in a '#' or '//' comment without its newline is a syntax error to libconfig 1.5. */
        if (r >= 0 && b->t->size > 0 && b->t->text[b->t->size - 1] != '\n')
                r = emit(b, "\n", 1);
        brackets_file_ended(&b->brackets, file, b->line);
        if (r >= 0 && depth > 0 && !b->t->unfinished.file && ends_inside_setting(&before, &last))
                note_unfinished(b->t, file, text, &last, b->line);
        return r;
}

/* lines_of: the lines of SIZE bytes of TEXT, the last one without its newline counted too (at
 * least 1). */
static unsigned lines_of(const char *text, size_t size) {
        unsigned n = 0;

        for (size_t i = 0; i < size; i++)
                n += text[i] == '\n';
        return size > 0 && text[size - 1] != '\n' ? n + 1 : n > 0 ? n : 1;
}

int conf_text_build(ConfText *t, const char *name, const char *text, size_t size, ConfTextError *err) {
        Builder b = { .t = t, .line = 1, .err = err };
        const char *slash = strrchr(name, '/');
        int r;

        *t = (ConfText) { 0 };
        *err = (ConfTextError) { 0 };
        /* libconfig reads a C string: anything after a NUL would be silently ignored. */
        if (strlen(text) != size)
                return text_error(err, -EINVAL, NULL, first_nul_line(text), "NUL byte in file");
        t->files = calloc(CONF_INCLUDE_FILES_MAX + 1, sizeof(char *));
        b.dir = slash ? strndup(name, slash == name ? 1 : (size_t) (slash - name)) : strdup(".");
        if (!t->files || !b.dir || !(t->files[0] = strdup(name))) {
                free(b.dir);
                conf_text_done(t);
                return text_error(err, -ENOMEM, NULL, 0, "out of memory");
        }
        t->n_files = 1;
        r = splice_text(&b, t->files[0], text, 0);
        if (r >= 0 && !t->text)
                r = emit(&b, "", 0);
        if (r >= 0) {
                t->last_line = b.line > 1 ? b.line - 1 : 1;
                t->main_last_line = lines_of(text, size);
        }
        /* The outermost bracket still open at the end of the text, for conf.c to name where
         * libconfig fails at or after the end of the file that opened it. */
        if (r >= 0 && b.brackets.depth > 0)
                t->unclosed = (ConfUnclosed) { .file = b.brackets.open[0].file, .line = b.brackets.open[0].line,
                                               .what = b.brackets.open[0].what, .after = b.brackets.open[0].file_end };
        free(b.dir);
        if (r < 0) {
                /* The message may point at a file name the ConfText owns: keep them. */
                free(t->text);
                t->text = NULL;
                t->size = 0;
        }
        return r;
}

void conf_text_done(ConfText *t) {
        if (!t)
                return;
        free(t->text);
        free(t->segs);
        for (size_t i = 0; t->files && i < t->n_files; i++)
                free(t->files[i]);
        free(t->files);
        *t = (ConfText) { 0 };
}

void conf_text_locate(const ConfText *t, unsigned line, const char **ret_file, unsigned *ret_line) {
        const ConfSegment *s = NULL;

        if (t->last_line > 0 && line > t->last_line) {
                /* The end of the text, which is the main file's end. */
                *ret_file = t->n_files > 0 ? t->files[0] : NULL;
                *ret_line = t->main_last_line;
                return;
        }
        for (size_t i = 0; i < t->n_segs && t->segs[i].first <= line; i++)
                s = &t->segs[i];
        if (!s) {
                *ret_file = t->n_files > 0 ? t->files[0] : NULL;
                *ret_line = line;
                return;
        }
        *ret_file = s->file;
        *ret_line = s->file_line + (line - s->first);
}

/* lines_in: the line ends in [P, END). */
static unsigned lines_in(const char *p, const char *end) {
        unsigned n = 0;

        for (; p < end; p++)
                n += *p == '\n';
        return n;
}

unsigned conf_text_string_line(const ConfText *t, unsigned line, const char *value) {
        size_t value_len = strlen(value);
        unsigned n = 1, found = 0;

        /* libconfig's own lexing, as far as it matters here: comments (#, //, C style) and
         * string literals with their escapes. The text has parsed, so it is well formed. */
        for (const char *p = t->text; *p && n <= line;) {
                if (*p == '#' || (p[0] == '/' && p[1] == '/')) {
                        p += strcspn(p, "\n");
                } else if (p[0] == '/' && p[1] == '*') {
                        const char *close = strstr(p + 2, "*/"), *after = close ? close + 2 : p + strlen(p);
                        n += lines_in(p, after);
                        p = after;
                } else if (*p == '"') {
                        /* A string may span lines: libconfig keeps the newlines in it. */
                        const char *q = p + 1;
                        unsigned begins = n;
                        for (; *q && *q != '"'; q += q[0] == '\\' && q[1] ? 2 : 1)
                                n += q[0] == '\n' || (q[0] == '\\' && q[1] == '\n');
                        if (*q == '"' && (size_t) (q - p - 1) == value_len && memcmp(p + 1, value, value_len) == 0)
                                found = begins;
                        p = *q == '"' ? q + 1 : q;
                } else {
                        n += *p == '\n';
                        p++;
                }
        }
        return found;
}

/* ---- libconfig 1.5 integer truncation ---- */

/* libconfig 1.5 reads an integer literal without an L suffix through a plain cast to int, so
 * `port = 4294967297;` arrives as 1 and `idle_timeout = 4294967296;` as 0 (never), with no error.
 * The API cannot tell, so the (spliced, already syntax-checked) text is scanned for such literals. */
static bool literal_is_wide(const char *t, size_t len) {
        unsigned long long v = 0, limit;
        bool negative = false, hex = false, saturated = false;
        size_t i = 0, digits = 0;

        if (t[i] == '-' || t[i] == '+')
                negative = t[i++] == '-';
        if (i + 1 < len && t[i] == '0' && (t[i + 1] == 'x' || t[i + 1] == 'X')) {
                hex = true;
                i += 2;
        }
        for (; i < len; i++, digits++) {
                char ch = t[i];
                unsigned d;

                if (is_ascii_digit(ch))
                        d = (unsigned) (ch - '0');
                else if (hex && ((ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F')))
                        d = (unsigned) ((ch | 0x20) - 'a' + 10);
                else
                        break;
                if (v > (ULLONG_MAX - d) / (hex ? 16 : 10))
                        saturated = true;
                else
                        v = v * (hex ? 16 : 10) + d;
        }
        if (digits == 0)
                return false;
        if (len - i == 1 && t[i] == 'L')
                limit = (unsigned long long) LLONG_MAX;
        else if (len - i == 2 && t[i] == 'L' && t[i + 1] == 'L')
                limit = (unsigned long long) LLONG_MAX;
        else if (i == len)
                limit = INT_MAX;
        else
                return false; /* a float, or not a number at all */
        return saturated || v > limit + (negative ? 1 : 0);
}

#define SCOPES_MAX CONF_NESTING_MAX

bool conf_text_find_wide(const ConfText *t, ConfSpot *ret) {
        Token tk, name = { .type = TOK_END }, key = { .type = TOK_END };
        Token keys[SCOPES_MAX]; /* the setting each open bracket belongs to */
        unsigned depth = 0;
        Scanner sc;

        scanner_init(&sc, t->text);
        while ((tk = scan_next(&sc)).type != TOK_END) {
                if (opens(&tk) && depth < SCOPES_MAX)
                        keys[depth++] = key;
                else if (closes(&tk) && depth > 0)
                        key = keys[--depth]; /* a group's last key is not the setting after it */
                else if (tk.type == TOK_NAME)
                        name = tk;
                else if ((is_punct(&tk, '=') || is_punct(&tk, ':')) && name.type == TOK_NAME)
                        key = name;
                else if (tk.type == TOK_NUMBER && key.type == TOK_NAME && literal_is_wide(tk.start, tk.len)) {
                        *ret = (ConfSpot) { .key = key.start, .key_len = key.len, .line = tk.line,
                                            .text = tk.start, .text_len = tk.len };
                        return true;
                }
        }
        return false;
}

/* ---- nesting ---- */

bool conf_text_find_too_deep(const ConfText *t, ConfSpot *ret) {
        unsigned depth = 0;
        Scanner sc;
        Token tk;

        scanner_init(&sc, t->text);
        while ((tk = scan_next(&sc)).type != TOK_END) {
                if (opens(&tk) && ++depth > CONF_NESTING_MAX) {
                        *ret = (ConfSpot) { .line = tk.line, .text = tk.start, .text_len = 1, .token = tk.start };
                        return true;
                }
                if (closes(&tk) && depth > 0)
                        depth--;
        }
        return false;
}

/* ---- a string out of place ---- */

bool conf_text_find_stray_string(const ConfText *t, ConfSpot *ret) {
        Token tk, prev = { .type = TOK_END };
        char open[SCOPES_MAX]; /* the brackets open around the token */
        unsigned depth = 0;
        Scanner sc;

        scanner_init(&sc, t->text);
        while ((tk = scan_next(&sc)).type != TOK_END) {
                /* A value (after '=' or ':'), a list's entry, or the next piece of a string. A
                 * ',' ends a setting too, outside a list ("port = 1, "a";"). */
                bool in_list = depth > 0 && open[depth - 1] != '{';
                bool in_place = prev.type == TOK_STRING || is_punct(&prev, '=') || is_punct(&prev, ':') ||
                                is_punct(&prev, '[') || is_punct(&prev, '(') || (is_punct(&prev, ',') && in_list);
                if (tk.type == TOK_STRING && !in_place && tk.len >= 2) {
                        *ret = (ConfSpot) { .line = tk.line, .text = tk.start + 1, .text_len = tk.len - 2,
                                            .token = tk.start };
                        return true;
                }
                if (opens(&tk)) {
                        if (depth == SCOPES_MAX)
                                return false; /* conf_text_find_too_deep refuses such a file */
                        open[depth++] = tk.start[0];
                } else if (closes(&tk) && depth > 0) {
                        depth--;
                }
                prev = tk;
        }
        return false;
}

/* ---- strings joined in a list ---- */

/* SettingTrack: as a scan goes, the setting a token belongs to: the name before the last '=' or
 * ':', and for each bracket open the setting it belongs to and which bracket it is. */
typedef struct SettingTrack {
        Token name, key;
        Token keys[SCOPES_MAX];
        char open[SCOPES_MAX];
        unsigned depth;
} SettingTrack;

static void track_init(SettingTrack *k) {
        k->name = k->key = (Token) { .type = TOK_END };
        k->depth = 0;
}

/* track_see: TK seen by K; false for a token that changes nothing K tracks (a value, a ';'). */
static bool track_see(SettingTrack *k, const Token *tk) {
        if (opens(tk) && k->depth < SCOPES_MAX) {
                k->keys[k->depth] = k->key;
                k->open[k->depth++] = tk->start[0];
        } else if (closes(tk) && k->depth > 0) {
                k->key = k->keys[--k->depth];
        } else if (tk->type == TOK_NAME) {
                k->name = *tk;
        } else if ((is_punct(tk, '=') || is_punct(tk, ':')) && k->name.type == TOK_NAME) {
                k->key = k->name;
        } else {
                return false;
        }
        return true;
}

/* track_list: the setting of the innermost bracket open, or outside any the last one named. */
static const Token *track_list(const SettingTrack *k) {
        return k->depth > 0 ? &k->keys[k->depth - 1] : &k->key;
}

bool conf_text_find_joined(const ConfText *t, ConfSpot *ret) {
        Token tk, prev = { .type = TOK_END };
        SettingTrack k;
        Scanner sc;

        track_init(&k);
        scanner_init(&sc, t->text);
        while ((tk = scan_next(&sc)).type != TOK_END) {
                if (!track_see(&k, &tk) && tk.type == TOK_STRING && prev.type == TOK_STRING && k.depth > 0 &&
                    k.open[k.depth - 1] != '{' && prev.len >= 2 && tk.len >= 2) {
                        const Token *list = track_list(&k);
                        *ret = (ConfSpot) { .key = list->start, .key_len = list->len, .line = tk.line,
                                            .text = prev.start + 1, .text_len = prev.len - 2, .next = tk.start + 1,
                                            .next_len = tk.len - 2 };
                        return true;
                }
                prev = tk;
        }
        return false;
}

/* ends_value: whether T can be the last token of a list's entry. */
static bool ends_value(const Token *t) {
        return t->type == TOK_STRING || t->type == TOK_NUMBER || t->type == TOK_NAME || closes(t);
}

bool conf_text_find_trailing_comma(const ConfText *t, ConfSpot *ret) {
        Token tk, prev = { .type = TOK_END }, before = { .type = TOK_END };
        SettingTrack k;
        Scanner sc;

        track_init(&k);
        scanner_init(&sc, t->text);
        while ((tk = scan_next(&sc)).type != TOK_END) {
                if ((is_punct(&tk, ']') || is_punct(&tk, ')')) && is_punct(&prev, ',') && ends_value(&before)) {
                        const Token *list = track_list(&k);
                        *ret = (ConfSpot) { .key = list->start, .key_len = list->type == TOK_END ? 0 : list->len,
                                            .line = prev.line, .text = prev.start, .text_len = 1,
                                            .next = tk.start, .next_len = 1, .next_line = tk.line };
                        return true;
                }
                (void) track_see(&k, &tk);
                before = prev;
                prev = tk;
        }
        return false;
}

const char *conf_text_line(const ConfText *t, unsigned line, size_t *ret_len) {
        const char *p = t->text;

        for (unsigned at = 1; at < line && p; at++)
                if ((p = strchr(p, '\n')))
                        p++;
        if (!p || line == 0) {
                *ret_len = 0;
                return t->text + t->size;
        }
        *ret_len = strcspn(p, "\n");
        return p;
}

/* ---- duplicate names ---- */

/* Setting NAMEs followed by '=' or ':', with the group ('{' ... '}') they are in: group 0 is the
 * file itself. VISIT returns true to stop. */
typedef bool (*SettingVisitor)(const Token *name, unsigned scope, void *userdata);

static void visit_settings(const ConfText *t, SettingVisitor visit, void *userdata) {
        unsigned stack[SCOPES_MAX], depth = 0, next_scope = 1;
        Token tk, prev = { .type = TOK_END };
        Scanner sc;

        stack[0] = 0;
        scanner_init(&sc, t->text);
        while ((tk = scan_next(&sc)).type != TOK_END) {
                if (is_punct(&tk, '{') && depth + 1 < SCOPES_MAX)
                        stack[++depth] = next_scope++;
                else if (is_punct(&tk, '}') && depth > 0)
                        depth--;
                else if ((is_punct(&tk, '=') || is_punct(&tk, ':')) && prev.type == TOK_NAME &&
                         visit(&prev, stack[depth], userdata))
                        return;
                prev = tk;
        }
}

typedef struct DupSearch {
        unsigned line;
        const char *after; /* candidates start past this */
        Token candidate;
        unsigned scope;
        bool found;
        unsigned first_line;
} DupSearch;

static bool same_name(const Token *a, const Token *b) {
        return a->len == b->len && memcmp(a->start, b->start, a->len) == 0;
}

/* find_candidate: the next setting on the line. */
static bool find_candidate(const Token *name, unsigned scope, void *userdata) {
        DupSearch *d = userdata;

        if (name->line < d->line || (d->after && name->start <= d->after))
                return false;
        if (name->line == d->line) {
                d->candidate = *name;
                d->scope = scope;
        }
        return true;
}

/* find_first: an earlier setting of the candidate's name in its group. */
static bool find_first(const Token *name, unsigned scope, void *userdata) {
        DupSearch *d = userdata;

        if (name->start >= d->candidate.start)
                return true;
        if (scope == d->scope && same_name(name, &d->candidate)) {
                d->found = true;
                d->first_line = name->line;
                return true;
        }
        return false;
}

bool conf_text_duplicate(const ConfText *t, unsigned line, char *buf, size_t size, unsigned *ret_first) {
        DupSearch d = { .line = line };

        if (!t->text || size == 0)
                return false;
        /* libconfig stops at the first duplicate: the first setting on its line that repeats a name
         * in its group is the one. */
        while (!d.found) {
                d.candidate = (Token) { .type = TOK_END };
                visit_settings(t, find_candidate, &d);
                if (d.candidate.type != TOK_NAME)
                        return false;
                visit_settings(t, find_first, &d);
                d.after = d.candidate.start;
        }
        (void) snprintf(buf, size, "%.*s", (int) d.candidate.len, d.candidate.start);
        *ret_first = d.first_line;
        return true;
}
