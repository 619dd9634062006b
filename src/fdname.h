/* fdname: systemd's rule for a file descriptor's name (FileDescriptorName=, FDNAME=), which the
 * config file's listen names and the hand-over's stored descriptors both follow. */
#pragma once

#include <stdbool.h>
#include <string.h>

/* FDNAME_MAX in systemd's fdset.h. */
#define FDNAME_MAX 255

/* fdname_valid: 1 to FDNAME_MAX printable ASCII characters, no space and no ':' (LISTEN_FDNAMES
 * separates names with ':'). */
static inline bool fdname_valid(const char *name) {
        size_t n = strlen(name);

        if (n == 0 || n > FDNAME_MAX)
                return false;
        for (const char *p = name; *p; p++)
                if (*p <= ' ' || *p >= 0x7f || *p == ':')
                        return false;
        return true;
}
