/* test_proto: the protocol as bytes in → bytes out, no sockets. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

static Conf conf;
static Proto proto;
static char out_data[1 << 16];
static Buf out;

static void setup_with(Framing framing, unsigned max_line, const char *prefix, const char *suffix) {
        conf = (Conf) {
                .greeting = (char *) "Welcome!",
                .reply_prefix = (char *) prefix,
                .reply_suffix = (char *) suffix,
                .framing = framing,
                .max_line_length = max_line,
        };
        cr_assert_eq(proto_init(&proto, &conf), 0);
        out = (Buf) { .data = out_data, .cap = sizeof(out_data) };
}

static void setup_line(void) {
        setup_with(FRAMING_LINE, 16, "Hello, ", "!");
}

static void setup_chunk(void) {
        setup_with(FRAMING_CHUNK, 16, "Hello, ", "!");
}

static void teardown(void) {
        proto_done(&proto);
}

/* feed: everything, flushing into OUT as proto asks; returns the final status. */
static ProtoStatus feed(const char *in, size_t n) {
        ProtoStatus status = PROTO_CONTINUE;
        size_t done = 0;

        while (done < n && status == PROTO_CONTINUE) {
                size_t used = proto_feed(&proto, in + done, n - done, &out, &status);
                cr_assert(used > 0 || status == PROTO_CLOSE, "no progress with room %zu", buf_room(&out));
                done += used;
        }
        return status;
}

static ProtoStatus feed_str(const char *s) {
        return feed(s, strlen(s));
}

static void expect_out(const char *expected, size_t n) {
        cr_assert_eq(out.len, n, "output is %zu bytes, expected %zu: '%.*s'", out.len, n, (int) out.len,
                     out.data);
        cr_assert(memcmp(out.data, expected, n) == 0, "output '%.*s'", (int) out.len, out.data);
}

static void expect_out_str(const char *expected) {
        expect_out(expected, strlen(expected));
}

TestSuite(line, .init = setup_line, .fini = teardown);

Test(line, greeting_has_crlf) {
        proto_greeting(&proto, &out);
        expect_out_str("Welcome!\r\n");
}

Test(line, one_line_lf) {
        cr_assert_eq(feed_str("Michael\n"), PROTO_CONTINUE);
        expect_out_str("Hello, Michael!\r\n");
        cr_assert_eq(proto.lines, 1);
}

Test(line, crlf_is_stripped) {
        feed_str("Tracy\r\n");
        expect_out_str("Hello, Tracy!\r\n");
}

Test(line, cr_inside_a_line_is_kept) {
        feed_str("a\rb\n");
        expect_out("Hello, a\rb!\r\n", 13);
}

Test(line, pipelined_lines_answered_in_order_in_one_feed) {
        ProtoStatus status;
        const char *in = "Michael\nTracy\r\nSarah\n";
        size_t used = proto_feed(&proto, in, strlen(in), &out, &status);

        cr_assert_eq(used, strlen(in));
        cr_assert_eq(status, PROTO_CONTINUE);
        expect_out_str("Hello, Michael!\r\nHello, Tracy!\r\nHello, Sarah!\r\n");
        cr_assert_eq(proto.lines, 3);
}

Test(line, line_split_across_reads) {
        feed_str("Mic");
        cr_assert_eq(out.len, 0);
        feed_str("ha");
        cr_assert_eq(out.len, 0);
        feed_str("el\nSa");
        expect_out_str("Hello, Michael!\r\n");
        feed_str("rah\n");
        expect_out_str("Hello, Michael!\r\nHello, Sarah!\r\n");
}

Test(line, crlf_split_between_reads) {
        feed_str("Tracy\r");
        feed_str("\n");
        expect_out_str("Hello, Tracy!\r\n");
}

Test(line, byte_by_byte) {
        const char *in = "Michael\r\nexit\n";
        ProtoStatus status = PROTO_CONTINUE;

        for (size_t i = 0; in[i] && status == PROTO_CONTINUE; i++)
                status = feed(in + i, 1);
        cr_assert_eq(status, PROTO_CLOSE);
        cr_assert_eq(proto.end, PROTO_END_EXIT);
        expect_out_str("Hello, Michael!\r\n");
}

Test(line, exit_closes_without_reply_and_discards_the_rest) {
        cr_assert_eq(feed_str("a\nexit\nb\n"), PROTO_CLOSE);
        cr_assert_eq(proto.end, PROTO_END_EXIT);
        expect_out_str("Hello, a!\r\n");
}

Test(line, exit_with_crlf) {
        cr_assert_eq(feed_str("exit\r\n"), PROTO_CLOSE);
        cr_assert_eq(proto.end, PROTO_END_EXIT);
        cr_assert_eq(out.len, 0);
}

Test(line, exit_split_across_reads) {
        feed_str("ex");
        cr_assert_eq(feed_str("it\n"), PROTO_CLOSE);
        cr_assert_eq(proto.end, PROTO_END_EXIT);
}

Test(line, exit_is_exact_and_case_sensitive) {
        feed_str("Exit\nexit \n exit\nexits\n");
        expect_out_str("Hello, Exit!\r\nHello, exit !\r\nHello,  exit!\r\nHello, exits!\r\n");
        cr_assert_eq(proto.end, PROTO_END_NONE);
}

Test(line, empty_lines_are_ignored) {
        cr_assert_eq(feed_str("\n\r\n\nA\n\n"), PROTO_CONTINUE);
        expect_out_str("Hello, A!\r\n");
        cr_assert_eq(proto.lines, 1);
}

Test(line, nul_and_invalid_utf8_are_echoed_verbatim) {
        const char in[] = "a\0b\xff\xfe\xc3\x28\n";
        const char expected[] = "Hello, a\0b\xff\xfe\xc3\x28!\r\n";

        feed(in, sizeof(in) - 1);
        expect_out(expected, sizeof(expected) - 1);
}

Test(line, line_of_max_length_is_answered) {
        feed_str("0123456789abcdef\n");
        expect_out_str("Hello, 0123456789abcdef!\r\n");
}

Test(line, line_of_max_length_with_crlf_is_answered) {
        feed_str("0123456789abcdef\r\n");
        expect_out_str("Hello, 0123456789abcdef!\r\n");
}

Test(line, line_of_max_length_with_split_crlf_is_answered) {
        feed_str("0123456789abcdef\r");
        cr_assert_eq(proto.end, PROTO_END_NONE);
        feed_str("\n");
        expect_out_str("Hello, 0123456789abcdef!\r\n");
}

Test(line, too_long_line_in_one_read) {
        cr_assert_eq(feed_str("a\n0123456789abcdefg\nb\n"), PROTO_CLOSE);
        cr_assert_eq(proto.end, PROTO_END_TOO_LONG);
        expect_out_str("Hello, a!\r\nERR line too long\r\n");
}

Test(line, too_long_unterminated_is_refused_before_its_newline) {
        cr_assert_eq(feed_str("0123456789"), PROTO_CONTINUE);
        cr_assert_eq(feed_str("abcdefg"), PROTO_CLOSE);
        cr_assert_eq(proto.end, PROTO_END_TOO_LONG);
        expect_out_str("ERR line too long\r\n");
}

Test(line, seventeen_bytes_then_cr_is_too_long) {
        cr_assert_eq(feed_str("0123456789abcdef\r"), PROTO_CONTINUE);
        cr_assert_eq(feed_str("x"), PROTO_CLOSE);
        expect_out_str("ERR line too long\r\n");
}

Test(line, cr_cr_lf_is_too_long_at_the_limit) {
        /* Only one '\r' belongs to the terminator: the other counts. */
        cr_assert_eq(feed_str("0123456789abcdef\r\r\n"), PROTO_CLOSE);
        expect_out_str("ERR line too long\r\n");
}

Test(line, too_long_split_over_pending_and_input) {
        feed_str("0123456789");
        cr_assert_eq(feed_str("abcdefgh\n"), PROTO_CLOSE);
        expect_out_str("ERR line too long\r\n");
}

Test(line, input_after_close_is_ignored) {
        ProtoStatus status;

        feed_str("exit\n");
        out.len = 0;
        cr_assert_eq(proto_feed(&proto, "x\n", 2, &out, &status), 2);
        cr_assert_eq(status, PROTO_CLOSE);
        cr_assert_eq(out.len, 0);
}

Test(line, eof_answers_unterminated_last_line) {
        feed_str("a\nb");
        proto_eof(&proto, &out);
        expect_out_str("Hello, a!\r\nHello, b!\r\n");
        cr_assert_eq(proto.end, PROTO_END_EOF);
}

Test(line, eof_strips_a_trailing_cr) {
        feed_str("b\r");
        proto_eof(&proto, &out);
        expect_out_str("Hello, b!\r\n");
}

Test(line, eof_after_unterminated_exit_closes_without_reply) {
        feed_str("exit");
        proto_eof(&proto, &out);
        cr_assert_eq(out.len, 0);
        cr_assert_eq(proto.end, PROTO_END_EXIT);
}

Test(line, eof_with_nothing_pending) {
        proto_eof(&proto, &out);
        cr_assert_eq(out.len, 0);
        cr_assert_eq(proto.end, PROTO_END_EOF);
}

Test(line, abort_idle_and_shutdown) {
        proto_abort(&proto, PROTO_END_IDLE, &out);
        expect_out_str("ERR idle timeout\r\n");
        proto_abort(&proto, PROTO_END_SHUTDOWN, &out); /* already ended: nothing more */
        expect_out_str("ERR idle timeout\r\n");
}

Test(line, full_output_buffer_applies_backpressure) {
        /* An output buffer with room for exactly two replies: the third waits. */
        char small[2 * 11];
        Buf b = { .data = small, .cap = sizeof(small) };
        ProtoStatus status;
        const char *in = "a\nb\nc\n";

        size_t used = proto_feed(&proto, in, strlen(in), &b, &status);
        cr_assert_eq(used, 4);
        cr_assert_eq(status, PROTO_CONTINUE);
        cr_assert_eq(b.len, 22);
        b.len = 0; /* flushed */
        used += proto_feed(&proto, in + used, strlen(in) - used, &b, &status);
        cr_assert_eq(used, strlen(in));
        cr_assert_eq(b.len, 11);
        cr_assert(memcmp(small, "Hello, c!\r\n", 11) == 0);
}

Test(line, full_output_with_pending_keeps_the_pending_part) {
        char small[11];
        Buf b = { .data = small, .cap = sizeof(small) };
        ProtoStatus status;

        cr_assert_eq(proto_feed(&proto, "x\nMic", 5, &b, &status), 5);
        cr_assert_eq(proto_feed(&proto, "hael\n", 5, &b, &status), 0);
        b.len = 0;
        b.data = out_data;
        b.cap = sizeof(out_data);
        cr_assert_eq(proto_feed(&proto, "hael\n", 5, &b, &status), 5);
        cr_assert(memcmp(out_data, "Hello, Michael!\r\n", 17) == 0);
}

Test(line, flood_of_empty_lines_costs_no_output) {
        static char in[100000];

        memset(in, '\n', sizeof(in));
        cr_assert_eq(feed(in, sizeof(in)), PROTO_CONTINUE);
        cr_assert_eq(out.len, 0);
}

Test(line, output_min_holds_the_longest_reply) {
        cr_assert_geq(proto_output_min(&conf), strlen("Hello, ") + 16 + strlen("!\r\n"));
        cr_assert_geq(proto_output_min(&conf), PROTO_ERR_MAX);
}

Test(template, prefix_and_suffix_with_percent_signs_are_literal) {
        setup_with(FRAMING_LINE, 64, "%s %n ", " %d!");
        feed_str("x\n");
        expect_out_str("%s %n x %d!\r\n");
        teardown();
}

Test(template, empty_prefix_and_suffix) {
        setup_with(FRAMING_LINE, 64, "", "");
        feed_str("x\n");
        expect_out_str("x\r\n");
        teardown();
}

TestSuite(chunk, .init = setup_chunk, .fini = teardown);

Test(chunk, greeting_has_no_terminator) {
        proto_greeting(&proto, &out);
        expect_out_str("Welcome!");
}

Test(chunk, each_read_is_one_message) {
        feed_str("Michael");
        expect_out_str("Hello, Michael!");
        feed_str("Tracy");
        expect_out_str("Hello, Michael!Hello, Tracy!");
}

Test(chunk, trailing_newline_is_stripped) {
        feed_str("Sarah\r\n");
        feed_str("Bob\n");
        expect_out_str("Hello, Sarah!Hello, Bob!");
}

Test(chunk, inner_newlines_are_part_of_the_message) {
        feed_str("a\nb");
        expect_out_str("Hello, a\nb!");
}

Test(chunk, exit_closes) {
        cr_assert_eq(feed_str("exit"), PROTO_CLOSE);
        cr_assert_eq(proto.end, PROTO_END_EXIT);
        cr_assert_eq(out.len, 0);
}

Test(chunk, exit_with_newline_closes) {
        cr_assert_eq(feed_str("exit\r\n"), PROTO_CLOSE);
}

Test(chunk, too_long_message) {
        cr_assert_eq(feed_str("0123456789abcdefg"), PROTO_CLOSE);
        expect_out_str("ERR line too long\r\n");
}

Test(chunk, max_length_message_with_terminator) {
        feed_str("0123456789abcdef\r\n");
        expect_out_str("Hello, 0123456789abcdef!");
}

Test(chunk, input_max_notices_an_overlong_message) {
        cr_assert_gt(proto_input_max(&conf), 16 + 2);
}

Test(chunk, eof_ends_quietly) {
        feed_str("a");
        proto_eof(&proto, &out);
        expect_out_str("Hello, a!");
        cr_assert_eq(proto.end, PROTO_END_EOF);
}

Test(line, messages_count_every_complete_line) {
        feed_str("a\n\n\r\nb");
        cr_assert_eq(proto.messages, 3, "empty lines count as complete lines");
        cr_assert_eq(proto.lines, 1);
        feed_str("\nexit\n");
        cr_assert_eq(proto.messages, 5);
}

Test(line, a_message_that_did_not_fit_is_counted_once) {
        char small[11];
        Buf b = { .data = small, .cap = sizeof(small) };
        ProtoStatus status;

        cr_assert_eq(proto_feed(&proto, "x\nyy\n", 5, &b, &status), 2);
        cr_assert_eq(proto.messages, 1);
        b.len = 0;
        cr_assert_eq(proto_feed(&proto, "yy\n", 3, &b, &status), 0, "12 bytes do not fit in 11");
        cr_assert_eq(proto.messages, 1);
}

Test(line, four_byte_first_line_without_pending_buffer) {
        /* The pending buffer comes lazily: "exit"-sized lines must not compare against NULL
         * (UBSan; found by the fuzzer). */
        cr_assert_null(proto.pending);
        cr_assert_eq(feed_str("abcd\nexit\n"), PROTO_CLOSE);
        expect_out_str("Hello, abcd!\r\n");
        cr_assert_eq(proto.end, PROTO_END_EXIT);
}
