/* buf: a fixed-capacity byte buffer; appends never grow it, callers check room first. */
#pragma once

#include <assert.h>
#include <stddef.h>
#include <string.h>

typedef struct Buf {
        char *data;
        size_t len;
        size_t cap;
} Buf;

static inline size_t buf_room(const Buf *b) {
        return b->cap - b->len;
}

static inline void buf_append(Buf *b, const void *p, size_t n) {
        assert(n <= buf_room(b));
        if (n > 0)
                memcpy(b->data + b->len, p, n);
        b->len += n;
}
