/* privileges: dropping root after the listeners are bound, as sshd and nginx do. */
#pragma once

#include <stddef.h>

/* privileges_drop: when running as root and USER or GROUP is set (either may be NULL; a
 * missing group is the user's primary group), switches to them for good: supplementary
 * groups, then group, then user, then checks that root cannot be regained. Returns 0 (also
 * when there was nothing to do), or a negative errno with the reason in ERR. */
int privileges_drop(const char *user, const char *group, char *err, size_t err_size);
