/* suite: binds the harness's failures to Criterion; one place for every integration file. */
#pragma once

#include <criterion/criterion.h>
#include <stdlib.h>

#include "harness.h"

static _Noreturn void suite_fail(const char *message) {
        cr_assert_fail("%s", message);
        abort();
}

static void suite_init(void) {
        harness_set_fail_handler(suite_fail);
}

/* HELLOD_SUITE: a Criterion suite whose harness failures fail the test and whose daemons and
 * temporary files are cleaned up after each test. */
#define HELLOD_SUITE(name) TestSuite(name, .init = suite_init, .fini = harness_cleanup)
