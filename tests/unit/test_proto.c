/* test_proto: the protocol as bytes in → bytes out, no sockets. */
#include <criterion/criterion.h>
#include <errno.h>
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
        /* 0xff is telnet's IAC in line framing: see the telnet suite. */
        const char in[] = "a\0b\xfe\xc3\x28\x80\n";
        const char expected[] = "Hello, a\0b\xfe\xc3\x28\x80!\r\n";

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

Test(line, pending_buffer_goes_once_its_line_is_answered) {
        /* A session keeps no buffer for a line that once came in pieces: an idle one costs
         * its struct alone (tests/integration: hostile/clients_that_split_a_line_...). */
        cr_assert_eq(feed_str("ab"), PROTO_CONTINUE);
        cr_assert_not_null(proto.pending);
        cr_assert_eq(feed_str("c\nde"), PROTO_CONTINUE);
        expect_out_str("Hello, abc!\r\n");
        cr_assert_not_null(proto.pending, "\"de\" is the next line's start");
        cr_assert_eq(proto.pending_len, 2);
        cr_assert_eq(feed_str("f\n"), PROTO_CONTINUE);
        expect_out_str("Hello, abc!\r\nHello, def!\r\n");
        cr_assert_null(proto.pending);
        cr_assert_eq(proto.pending_len, 0);
}

/* ---- telnet commands in line framing (README, Protocol) ---- */

#define IAC "\xff"
#define WILL "\xfb"
#define WONT "\xfc"
#define DO "\xfd"
#define DONT "\xfe"
#define SB "\xfa"
#define SE "\xf0"
#define TM "\x06"

/* feed_lit: a string literal that may hold NUL bytes. */
#define feed_lit(s) feed((s), sizeof(s) - 1)
#define expect_lit(s) expect_out((s), sizeof(s) - 1)

TestSuite(telnet, .init = setup_line, .fini = teardown);

Test(telnet, ctrl_c_ends_the_session_without_echo) {
        /* What telnet sends for Ctrl+C: IAC IP IAC DO TIMING-MARK. */
        cr_assert_eq(feed_str("Michael\r\n"), PROTO_CONTINUE);
        cr_assert_eq(feed_lit(IAC "\xf4" IAC DO TM), PROTO_CLOSE);
        cr_assert_eq(proto.end, PROTO_END_INTERRUPT);
        expect_out_str("Hello, Michael!\r\n");
        cr_assert_str_eq(proto_end_to_string(proto.end), "interrupt");
}

Test(telnet, interrupt_abort_break_eof_end_the_session_and_drop_the_line) {
        static const char ends[] = { '\xf4', '\xf5', '\xf3', '\xec', '\xee' }; /* IP AO BRK EOF ABORT */

        for (size_t k = 0; k < sizeof(ends); k++) {
                char in[] = "a\nunterminated" IAC "?" "b\n";

                in[sizeof("a\nunterminated" IAC) - 1] = ends[k];
                teardown();
                setup_line();
                cr_assert_eq(feed(in, sizeof(in) - 1), PROTO_CLOSE, "command 0x%02x", (unsigned char) ends[k]);
                cr_assert_eq(proto.end, PROTO_END_INTERRUPT);
                expect_out_str("Hello, a!\r\n");
                proto_eof(&proto, &out); /* the unterminated line is gone for good */
                expect_out_str("Hello, a!\r\n");
        }
}

Test(telnet, two_byte_commands_are_dropped_from_the_line) {
        /* NOP DM GA EC EL SUSP EOR, and SE outside a subnegotiation. */
        static const char dropped[] = { '\xf1', '\xf2', '\xf9', '\xf7', '\xf8', '\xed', '\xef', '\xf0' };

        for (size_t k = 0; k < sizeof(dropped); k++) {
                char in[] = "Mi" IAC "?" "chael\n";

                in[3] = dropped[k];
                feed(in, sizeof(in) - 1);
        }
        cr_assert_eq(proto.end, PROTO_END_NONE);
        cr_assert_eq(proto.lines, sizeof(dropped));
        for (size_t k = 0; k < sizeof(dropped); k++)
                cr_assert(memcmp(out.data + k * 17, "Hello, Michael!\r\n", 17) == 0, "command %zu", k);
        cr_assert_eq(out.len, sizeof(dropped) * 17);
}

Test(telnet, commands_inside_exit_leave_exit) {
        cr_assert_eq(feed_lit("ex" IAC "\xf1" "it\r\n"), PROTO_CLOSE);
        cr_assert_eq(proto.end, PROTO_END_EXIT);
        cr_assert_eq(out.len, 0);
}

Test(telnet, do_is_refused_with_wont) {
        feed_lit(IAC DO "\x01" IAC DO "\x03" IAC DO "\x18");
        expect_lit(IAC WONT "\x01" IAC WONT "\x03" IAC WONT "\x18");
}

Test(telnet, will_is_refused_with_dont) {
        feed_lit(IAC WILL "\x1f" IAC WILL "\x18" IAC WILL TM);
        expect_lit(IAC DONT "\x1f" IAC DONT "\x18" IAC DONT TM);
}

Test(telnet, wont_and_dont_get_no_answer) {
        /* They confirm the state hellod is in: answering them could loop. */
        cr_assert_eq(feed_lit(IAC WONT "\x01" IAC DONT "\x03" IAC WONT TM IAC DONT TM "a\n"), PROTO_CONTINUE);
        expect_out_str("Hello, a!\r\n");
}

Test(telnet, do_timing_mark_gets_will_timing_mark_in_order) {
        /* RFC 860: WILL TIMING-MARK after the answers to everything before it. */
        feed_lit("a\n" IAC DO TM "b\n");
        expect_lit("Hello, a!\r\n" IAC WILL TM "Hello, b!\r\n");
}

Test(telnet, ctrl_z_is_dropped_and_its_timing_mark_answered) {
        /* telnet's Ctrl+Z: IAC SUSP IAC DO TIMING-MARK; it shows nothing until the answer. */
        cr_assert_eq(feed_lit(IAC "\xed" IAC DO TM "Tracy\r\n"), PROTO_CONTINUE);
        expect_lit(IAC WILL TM "Hello, Tracy!\r\n");
}

Test(telnet, session_continues_after_negotiation) {
        feed_lit(IAC DO "\x03" IAC WILL "\x22" "Mic" IAC DO "\x01" "hael\r\n");
        expect_lit(IAC WONT "\x03" IAC DONT "\x22" IAC WONT "\x01" "Hello, Michael!\r\n");
        cr_assert_eq(feed_str("exit\r\n"), PROTO_CLOSE);
        cr_assert_eq(proto.end, PROTO_END_EXIT);
}

Test(telnet, are_you_there_gets_yes) {
        feed_lit("a" IAC "\xf6" "b\n");
        expect_lit("[Yes]\r\nHello, ab!\r\n");
}

Test(telnet, iac_iac_is_one_ff_data_byte) {
        feed_lit("a" IAC IAC "b\n" IAC IAC "\n");
        expect_lit("Hello, a\xff" "b!\r\nHello, \xff!\r\n");
}

Test(telnet, iac_before_a_non_command_is_dropped_alone) {
        /* A stray 0xFF never swallows the newline after it. */
        feed_lit("abc" IAC "\n" IAC "x\n");
        expect_lit("Hello, abc!\r\nHello, x!\r\n");
        feed_lit("d" IAC);
        feed_lit("\xeb" "e\n"); /* 0xeb: just below the command bytes */
        expect_lit("Hello, abc!\r\nHello, x!\r\nHello, d\xeb" "e!\r\n");
}

Test(telnet, other_bytes_stay_8_bit_clean) {
        const char in[] = "\x00\x80\xfe\xf4\xfd\xc3\x28\r\x1b\n";
        const char expected[] = "Hello, \x00\x80\xfe\xf4\xfd\xc3\x28\r\x1b!\r\n";

        feed(in, sizeof(in) - 1);
        expect_out(expected, sizeof(expected) - 1);
}

Test(telnet, subnegotiation_is_skipped_in_full) {
        /* NAWS 80x24, TTYPE IS "xterm" with an escaped 0xFF and a stray IAC x inside. */
        feed_lit("a" IAC SB "\x1f\x00\x50\x00\x18" IAC SE "b" IAC SB "\x18\x00xt" IAC IAC "e" IAC "\xf1" "rm" IAC SE
                         "c\n");
        expect_lit("Hello, abc!\r\n");
        cr_assert_eq(proto.telnet, PROTO_TELNET_DATA);
}

Test(telnet, subnegotiation_of_max_line_length_is_skipped) {
        /* 16 bytes between IAC SB and IAC SE, the IAC IAC pair counting two. */
        feed_lit(IAC SB "0123456789abcd" IAC IAC IAC SE "x\n");
        expect_lit("Hello, x!\r\n");
}

Test(telnet, subnegotiation_over_max_line_length_ends_the_session) {
        cr_assert_eq(feed_lit(IAC SB "0123456789abcdef"), PROTO_CONTINUE);
        cr_assert_eq(feed_lit("g"), PROTO_CLOSE);
        cr_assert_eq(proto.end, PROTO_END_TOO_LONG);
        expect_out_str("ERR line too long\r\n");
}

Test(telnet, subnegotiation_bound_counts_iac_pairs) {
        cr_assert_eq(feed_lit(IAC SB "0123456789abcde" IAC "\xf1"), PROTO_CLOSE);
        expect_out_str("ERR line too long\r\n");
}

Test(telnet, escaped_ff_counts_against_max_line_length) {
        feed_lit("0123456789abcde" IAC IAC "\n");
        expect_lit("Hello, 0123456789abcde\xff!\r\n");
        cr_assert_eq(feed_lit("0123456789abcdef" IAC IAC "\n"), PROTO_CLOSE);
        expect_lit("Hello, 0123456789abcde\xff!\r\nERR line too long\r\n");
}

Test(telnet, overlong_line_ends_before_a_later_command_is_answered) {
        cr_assert_eq(feed_lit("0123456789abcdefgh" IAC DO "\x01" "\n"), PROTO_CLOSE);
        expect_out_str("ERR line too long\r\n");
}

Test(telnet, cr_command_lf_is_a_crlf) {
        feed_lit("0123456789abcdef\r" IAC "\xf1" "\n");
        expect_out_str("Hello, 0123456789abcdef!\r\n");
}

Test(telnet, eof_inside_a_command_answers_the_line_before_it) {
        feed_lit("abc" IAC);
        proto_eof(&proto, &out);
        expect_out_str("Hello, abc!\r\n");
        cr_assert_eq(proto.end, PROTO_END_EOF);
}

/* One input with every class of command; split in two at every byte, and byte by byte, it
 * must give the output it gives in one piece. */
static const char every_class[] = "Mi" IAC "\xf1" "ch" IAC DO "\x01" "ae" IAC SB "\x1f\x00\x50" IAC IAC "\x18" IAC SE
                                  "l" IAC IAC "\r\n" IAC WILL "\x03" IAC WONT "\x05" IAC "\xf6" "x" IAC "y\n" IAC DO TM
                                  IAC "\xf4" IAC DO TM "never\n";
static const char every_class_out[] = IAC WONT "\x01" "Hello, Michael\xff!\r\n" IAC DONT "\x03" "[Yes]\r\n"
                                      "Hello, xy!\r\n" IAC WILL TM;

Test(telnet, every_class_in_one_piece) {
        cr_assert_eq(feed(every_class, sizeof(every_class) - 1), PROTO_CLOSE);
        expect_lit(every_class_out);
        cr_assert_eq(proto.end, PROTO_END_INTERRUPT);
        cr_assert_eq(proto.lines, 2);
}

Test(telnet, every_class_split_at_every_byte) {
        const size_t n = sizeof(every_class) - 1;

        for (size_t cut = 1; cut < n; cut++) {
                teardown();
                setup_line();
                ProtoStatus status = feed(every_class, cut);

                /* The IAC IP ends it, wherever the cut is: what follows is discarded. */
                cr_assert_eq(status, cut < n - sizeof("never\n" IAC DO TM) + 1 ? PROTO_CONTINUE : PROTO_CLOSE,
                             "cut at %zu", cut);
                cr_assert_eq(proto_feed(&proto, every_class + cut, n - cut, &out, &status), n - cut);
                cr_assert_eq(status, PROTO_CLOSE, "cut at %zu", cut);
                expect_lit(every_class_out);
                cr_assert_eq(proto.end, PROTO_END_INTERRUPT);
        }
}

Test(telnet, every_class_byte_by_byte) {
        ProtoStatus status = PROTO_CONTINUE;

        for (size_t i = 0; i < sizeof(every_class) - 1 && status == PROTO_CONTINUE; i++)
                status = feed(every_class + i, 1);
        cr_assert_eq(status, PROTO_CLOSE);
        expect_lit(every_class_out);
}

/* feed_tight: feeds IN into an output buffer of CAP bytes, recording how much each call
 * consumed, flushing into OUT (the test's big buffer) whenever proto leaves input over. */
static ProtoStatus feed_tight(const char *in, size_t n, size_t cap, size_t *ret_first_used) {
        char small[64];
        Buf b = { .data = small, .cap = cap };
        ProtoStatus status = PROTO_CONTINUE;
        size_t done = 0;

        cr_assert_leq(cap, sizeof(small));
        for (int calls = 0; done < n && status == PROTO_CONTINUE; calls++) {
                size_t used = proto_feed(&proto, in + done, n - done, &b, &status);

                if (calls == 0)
                        *ret_first_used = used;
                cr_assert(used > 0 || b.len > 0 || status == PROTO_CLOSE, "no progress with an empty buffer");
                done += used;
                buf_append(&out, small, b.len);
                b.len = 0;
        }
        return status;
}

Test(telnet, full_output_waits_in_the_middle_of_a_negotiation) {
        size_t first;

        /* 11 bytes of reply leave 1 byte: the WONT waits for its option byte. */
        cr_assert_eq(feed_tight("a\n" IAC DO "\x01" "b\n", 7, 12, &first), PROTO_CONTINUE);
        cr_assert_eq(first, 4, "consumed up to the option byte, got %zu", first);
        expect_lit("Hello, a!\r\n" IAC WONT "\x01" "Hello, b!\r\n");
}

Test(telnet, full_output_waits_before_are_you_there) {
        size_t first;

        cr_assert_eq(feed_tight("a\n" IAC "\xf6" "b\n", 6, 17, &first), PROTO_CONTINUE);
        cr_assert_eq(first, 3);
        expect_lit("Hello, a!\r\n[Yes]\r\nHello, b!\r\n");
}

Test(telnet, full_output_waits_before_the_err_of_an_overlong_subnegotiation) {
        size_t first;

        cr_assert_eq(feed_tight("a\n" IAC SB "0123456789abcdefg", 21, 40, &first), PROTO_CLOSE);
        cr_assert_eq(first, 20, "the byte over the limit waits, got %zu", first);
        expect_out_str("Hello, a!\r\nERR line too long\r\n");
}

Test(telnet, full_output_waits_before_the_err_of_an_escaped_ff) {
        size_t first;

        cr_assert_eq(feed_tight("a\n0123456789abcdef" IAC IAC, 20, 40, &first), PROTO_CLOSE);
        cr_assert_eq(first, 19, "the second IAC waits, got %zu", first);
        expect_out_str("Hello, a!\r\nERR line too long\r\n");
}

Test(telnet, full_output_every_class_with_a_tight_buffer) {
        /* proto_output_min() for this configuration is 7 + 16 + 1 + 2 + 32 = 58 bytes. */
        size_t first;

        cr_assert_eq(proto_output_min(&conf), 58);
        cr_assert_eq(feed_tight(every_class, sizeof(every_class) - 1, 58, &first), PROTO_CLOSE);
        expect_lit(every_class_out);
}

Test(chunk, telnet_commands_are_data_in_chunk_framing) {
        /* The tutorial's framing interprets nothing. */
        cr_assert_eq(feed_lit(IAC "\xf4" IAC DO TM), PROTO_CONTINUE);
        expect_lit("Hello, " IAC "\xf4" IAC DO TM "!");
}

/* input_after_end: whether the client sent more in the read that ended the conversation (it
 * may still be sending: the server lingers, src/session.c). */
Test(line, input_after_end_is_what_followed_the_ending_line) {
        static const struct {
                const char *in;
                bool after;
        } cases[] = {
                { "a\nexit\r\n", false }, { "exit\nb", true }, { "exit\n\n", true },
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                teardown();
                setup_line();
                cr_assert_eq(feed_str(cases[i].in), PROTO_CLOSE, "%s", cases[i].in);
                cr_assert_eq(proto.input_after_end, cases[i].after, "%s", cases[i].in);
        }
}

Test(line, a_read_after_the_end_is_input_after_the_end) {
        cr_assert_eq(feed_str("exit\n"), PROTO_CLOSE);
        cr_assert_not(proto.input_after_end);
        cr_assert_eq(feed_str("late\n"), PROTO_CLOSE);
        cr_assert(proto.input_after_end);
}

Test(chunk, exit_leaves_nothing_after_the_end) {
        cr_assert_eq(feed_str("exit\n"), PROTO_CLOSE);
        cr_assert_not(proto.input_after_end);
}

Test(telnet, an_interrupt_and_what_follows_it) {
        cr_assert_eq(feed_lit(IAC "\xf4"), PROTO_CLOSE);
        cr_assert_not(proto.input_after_end, "the interrupt was the last byte");
        teardown();
        setup_line();
        cr_assert_eq(feed_lit(IAC "\xf4" IAC DO TM), PROTO_CLOSE);
        cr_assert(proto.input_after_end, "telnet's DO TIMING-MARK follows its interrupt");
        teardown();
        setup_line();
        cr_assert_eq(feed_lit("exit\n" IAC "\xf4"), PROTO_CLOSE);
        cr_assert(proto.input_after_end, "a command after exit");
}

/* restart_then: FIRST fed, the bytes proto_telnet_restart() gives compared with RESTART, then
 * a fresh Proto (the next process after a hand-over) given the subnegotiation the first was
 * inside, if any, and fed those bytes and REST: its output is WANT, as if the whole had come
 * to one process. */
static void restart_then(const char *first, size_t first_len, const char *restart, size_t restart_len,
                         const char *rest, const char *want) {
        uint8_t head[PROTO_TELNET_RESTART_MAX];
        char input[64];
        size_t skipped = 0;

        feed(first, first_len);
        size_t n = proto_telnet_restart(&proto, head);
        cr_assert_eq(n, restart_len, "after %zu bytes: %zu bytes to begin again", first_len, n);
        cr_assert_eq(memcmp(head, restart, n), 0);
        bool in_subnegotiation = proto_subnegotiation(&proto, &skipped);
        teardown();
        setup_line();
        if (in_subnegotiation)
                cr_assert_eq(proto_resume_subnegotiation(&proto, skipped), 0);
        memcpy(input, head, n);
        memcpy(input + n, rest, strlen(rest));
        feed(input, n + strlen(rest));
        expect_out_str(want);
        teardown();
        setup_line();
}
#define restart_then_lit(first, restart, rest, want) \
        restart_then((first), sizeof(first) - 1, (restart), sizeof(restart) - 1, (rest), (want))

/* A hand-over between two bytes of a command: the next process reads it whole. */
Test(telnet, a_command_cut_by_a_hand_over_begins_again) {
        restart_then_lit("bob\n", "", "x\n", "Hello, x!\r\n");
        restart_then_lit(IAC, IAC, "\xf6x\n", "[Yes]\r\nHello, x!\r\n");
        restart_then_lit("a" IAC DO, IAC DO, "\x18" "b\n", "\xff\xfc\x18" "Hello, b!\r\n");
        restart_then_lit(IAC SB "\x18\x01", "", "\x02" IAC SE "c\n", "Hello, c!\r\n");
        restart_then_lit(IAC SB "\x18" IAC, IAC, SE "d\n", "Hello, d!\r\n");
        restart_then_lit(IAC IAC, "", "e\n", "Hello, e!\r\n"); /* an escaped 0xff: data, not a command */
}

/* A subnegotiation cut by a hand-over goes on counting its bytes in the next process: one
 * over max_line_length in all still ends the session, one at it still does not. (It used to
 * count from zero again: a driver run found the too-long one answered as a line.) */
Test(telnet, a_subnegotiation_cut_by_a_hand_over_keeps_its_count) {
        size_t skipped = 0;

        feed_lit("a" IAC SB "0123456789");
        cr_assert(proto_subnegotiation(&proto, &skipped));
        cr_assert_eq(skipped, 10);
        teardown();
        setup_line();
        restart_then_lit(IAC SB "0123456789", "", "abcdef" IAC SE "x\n", "Hello, x!\r\n");
        restart_then_lit(IAC SB "0123456789", "", "abcdefg", "ERR line too long\r\n");
        /* Stopped at an IAC inside: the pair counts two once the next process reads it. */
        restart_then_lit(IAC SB "012345678" IAC, IAC, IAC "abcde" IAC SE "x\n", "Hello, x!\r\n");
        restart_then_lit(IAC SB "012345678" IAC, IAC, IAC "abcdef", "ERR line too long\r\n");
}

Test(telnet, no_subnegotiation_outside_one_or_after_the_end) {
        size_t skipped = 7;

        feed_lit("a" IAC SB "01" IAC SE);
        cr_assert_not(proto_subnegotiation(&proto, &skipped));
        teardown();
        setup_line();
        /* Ended by one too long, its ERR line perhaps not sent yet: a hand-over now carries the
         * end, not a subnegotiation (a record would be refused with both). */
        cr_assert_eq(feed_lit(IAC SB "0123456789abcdefg"), PROTO_CLOSE);
        cr_assert_not(proto_subnegotiation(&proto, &skipped));
}

Test(telnet, a_resumed_subnegotiation_is_bounded) {
        cr_assert_eq(proto_resume_subnegotiation(&proto, 17), -EINVAL, "over max_line_length (16)");
        cr_assert_eq(proto_resume_subnegotiation(&proto, 16), 0);
        cr_assert_eq(feed_lit("x"), PROTO_CLOSE);
        expect_out_str("ERR line too long\r\n");
        teardown();
        setup_chunk();
        cr_assert_eq(proto_resume_subnegotiation(&proto, 1), -EINVAL, "no telnet in chunk framing");
}

/* After the end there is nothing to begin again. */
Test(telnet, no_restart_after_the_end) {
        uint8_t head[PROTO_TELNET_RESTART_MAX];

        cr_assert_eq(feed_lit("exit\n" IAC), PROTO_CLOSE);
        cr_assert_eq(proto_telnet_restart(&proto, head), 0);
}
