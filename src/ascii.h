/* ascii: character classes of the C locale whatever the process's locale (<ctype.h> follows
 * it, and takes an int that a negative char would make undefined). */
#pragma once

#include <stdbool.h>

static inline bool is_ascii_digit(char c) {
        return c >= '0' && c <= '9';
}

static inline bool is_ascii_alpha(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
