/* test_handover: the state handed to the next process (src/handover.c). Round trips of random
 * records and state files; then what the resume side must survive: every single bit flipped,
 * every prefix, foreign bytes, another magic or version, and hostile records whose checksum is
 * right but whose lengths, counts and fields are not. Also the file descriptor names. */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "handover.h"
#include "proto.h"

/* An output buffer larger than LIMITS allow (a_record_over_the_new_limits_is_refused_alone). */
#define LIMITS_OUTPUT_LARGE (4 * 16384)

static const HandoverLimits LIMITS = {
        .framing = FRAMING_LINE,
        .max_line_length = 64,
        .input_max = 4096,
        .output_max = 16384,
        .discard_max = 65536,
        .records_max = 1024,
        .linger_max_usec = 1000000,
};

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rnd(void) {
        rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
        return rng_state;
}

static size_t rnd_below(size_t n) {
        return n ? (size_t) (rnd() % n) : 0;
}

static void fill(uint8_t *p, size_t n) {
        for (size_t i = 0; i < n; i++)
                p[i] = (uint8_t) rnd();
}

/* Storage behind a random record's byte strings. */
typedef struct Strings {
        char listen[HANDOVER_LISTEN_MAX];
        uint8_t pending[65];
        uint8_t input[4096];
        uint8_t output[16384];
} Strings;

/* random_address: an IPv4 or IPv6 address and port at random (a scope id, sometimes) into SS. */
static void random_address(struct sockaddr_storage *ss) {
        if (rnd() & 1) {
                struct sockaddr_in *in = (struct sockaddr_in *) ss;
                in->sin_family = AF_INET;
                in->sin_port = (uint16_t) rnd();
                in->sin_addr.s_addr = (uint32_t) rnd();
        } else {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) ss;
                in6->sin6_family = AF_INET6;
                in6->sin6_port = (uint16_t) rnd();
                fill(in6->sin6_addr.s6_addr, 16);
                in6->sin6_scope_id = (uint32_t) (rnd_below(4) ? 0 : rnd());
        }
}

/* random_record: a record that LIMITS accept, with every field drawn at random. */
static HandoverRecord random_record(Strings *s) {
        HandoverRecord rec = { .id = (rnd() & HANDOVER_ID_MAX) | 1, .framing = FRAMING_LINE };
        int kind = (int) rnd_below(4);

        rec.age_usec = rnd();
        rec.deadline_left_usec = rnd_below(8) ? rnd() % ((uint64_t) CONF_IDLE_TIMEOUT_MAX * 1000000u + 1) : HANDOVER_NO_DEADLINE;
        rec.messages = rnd() >> 1;
        rec.lines = rec.messages ? rnd() % rec.messages : 0;
        rec.conf_generation = rnd();
        rec.conf_hash = rnd();
        random_address(&rec.peer);
        rec.listen_len = 1 + rnd_below(sizeof(s->listen));
        for (size_t i = 0; i < rec.listen_len; i++)
                s->listen[i] = (char) (0x20 + rnd_below(0x5f));
        rec.listen = s->listen;
        if (kind == 0) { /* lingering after exit */
                rec.end = PROTO_END_EXIT;
                rec.flags = HANDOVER_LINGERING | (rnd() & 1 ? HANDOVER_LOGGED : 0u);
                rec.discarded = (uint32_t) rnd_below(LIMITS.discard_max + 1);
                rec.deadline_left_usec = rnd() % (LIMITS.linger_max_usec + 1); /* always one */
                return rec;
        }
        rec.pending_len = rnd_below(sizeof(s->pending)); /* up to max_line_length */
        fill(s->pending, rec.pending_len);
        for (size_t i = 0; i < rec.pending_len; i++)
                if (s->pending[i] == '\n')
                        s->pending[i] = 'x';
        if (rnd_below(4) == 0) { /* at the limit, waiting for its LF */
                rec.pending_len = 65;
                memset(s->pending, 'y', 64);
                s->pending[64] = '\r';
        }
        rec.pending = s->pending;
        rec.input_len = kind == 1 ? rnd_below(sizeof(s->input) + 1) : 0;
        fill(s->input, rec.input_len);
        rec.input = s->input;
        rec.output_len = kind >= 2 ? rnd_below(sizeof(s->output) + 1) : 0;
        fill(s->output, rec.output_len);
        rec.output = s->output;
        if (rec.output_len > 0 && (rnd() & 1))
                rec.flags = HANDOVER_WANT_WRITE;
        if (rnd_below(3) == 0) /* behind a balancer; sometimes its own connection */
                rec.flags |= HANDOVER_VIA_BALANCER | (rnd() & 1 ? HANDOVER_BALANCER_OWN : 0u);
        if (rnd_below(4) == 0) { /* inside a telnet subnegotiation */
                rec.flags |= HANDOVER_SUBNEGOTIATION;
                rec.subnegotiation_len = (uint32_t) rnd_below(LIMITS.max_line_length + 1);
        }
        return rec;
}

static void expect_same(const HandoverRecord *a, const HandoverRecord *b) {
        cr_assert_eq(a->id, b->id);
        cr_assert_eq(a->framing, b->framing);
        cr_assert_eq(a->end, b->end);
        cr_assert_eq(a->flags, b->flags);
        cr_assert_eq(a->peer.ss_family, b->peer.ss_family);
        size_t peer_len = a->peer.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
        cr_assert_eq(memcmp(&a->peer, &b->peer, peer_len), 0, "peer differs");
        cr_assert_eq(a->age_usec, b->age_usec);
        cr_assert_eq(a->deadline_left_usec, b->deadline_left_usec);
        cr_assert_eq(a->lines, b->lines);
        cr_assert_eq(a->messages, b->messages);
        cr_assert_eq(a->conf_generation, b->conf_generation);
        cr_assert_eq(a->conf_hash, b->conf_hash);
        cr_assert_eq(a->discarded, b->discarded);
        cr_assert_eq(a->subnegotiation_len, b->subnegotiation_len);
        cr_assert_eq(a->listen_len, b->listen_len);
        cr_assert_eq(memcmp(a->listen, b->listen, a->listen_len), 0);
        cr_assert_eq(a->pending_len, b->pending_len);
        cr_assert_eq(a->pending_len ? memcmp(a->pending, b->pending, a->pending_len) : 0, 0);
        cr_assert_eq(a->input_len, b->input_len);
        cr_assert_eq(a->input_len ? memcmp(a->input, b->input, a->input_len) : 0, 0);
        cr_assert_eq(a->output_len, b->output_len);
        cr_assert_eq(a->output_len ? memcmp(a->output, b->output, a->output_len) : 0, 0);
}

static HandoverBuf encode(const HandoverRecord *rec) {
        HandoverBuf b = { 0 };

        cr_assert_eq(handover_record_encode(&b, rec), 0);
        return b;
}

/* decode_fails: DATA is refused, with a reason containing WHY (when not NULL). */
static void decode_fails(const uint8_t *data, size_t size, const HandoverLimits *limits, const char *why) {
        HandoverRecord rec;
        const char *reason = NULL;
        size_t used = 0;

        cr_assert_eq(handover_record_decode(data, size, limits, &rec, &used, &reason), -EBADMSG,
                     "a record that should be refused (%s) was accepted", why ? why : "?");
        cr_assert(reason && *reason, "refused without a reason");
        if (why)
                cr_assert(strstr(reason, why), "reason '%s', expected '%s'", reason, why);
}

/* reseal: the record's checksum recomputed, as a buggy or hostile writer would. */
static void reseal(uint8_t *data, size_t len) {
        uint32_t crc = handover_crc32c(0, data, len - 4);

        for (int i = 0; i < 4; i++)
                data[len - 4 + i] = (uint8_t) (crc >> (8 * i));
}

static void put32(uint8_t *p, uint32_t v) {
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}

/* A small valid record: listen "127.0.0.1:9999", pending "ab", no input or output. */
static HandoverRecord small_record(void) {
        HandoverRecord rec = {
                .id = 42, .framing = FRAMING_LINE, .end = PROTO_END_NONE, .age_usec = 5000000,
                .deadline_left_usec = 55000000, .lines = 3, .messages = 4, .listen = "127.0.0.1:9999",
                .listen_len = 14, .pending = (const uint8_t *) "ab", .pending_len = 2,
        };
        struct sockaddr_in *in = (struct sockaddr_in *) &rec.peer;

        in->sin_family = AF_INET;
        in->sin_port = htons(40000);
        in->sin_addr.s_addr = htonl(0x7f000001);
        return rec;
}

/* Offsets in a record: the listener name's length, then the pending line's. */
#define OFF_LEN 4
#define OFF_LISTEN_LEN 94
#define OFF_PENDING_LEN (OFF_LISTEN_LEN + 2 + 14)

/* ---- basics -------------------------------------------------------------------------------- */

Test(crc, known_answers) {
        /* RFC 3720 B.4 and the usual check value. */
        uint8_t zeros[32] = { 0 }, ones[32];

        memset(ones, 0xff, sizeof(ones));
        cr_assert_eq(handover_crc32c(0, "123456789", 9), 0xe3069283u);
        cr_assert_eq(handover_crc32c(0, zeros, sizeof(zeros)), 0x8a9136aau);
        cr_assert_eq(handover_crc32c(0, ones, sizeof(ones)), 0x62a8ab43u);
        /* In pieces as at once. */
        cr_assert_eq(handover_crc32c(handover_crc32c(0, "1234", 4), "56789", 5), 0xe3069283u);
}

Test(record, small_round_trip_and_layout) {
        HandoverRecord rec = small_record(), back;
        HandoverBuf b = encode(&rec);
        size_t used = 0;
        const char *reason = NULL;

        cr_assert_eq(b.len, 112 + 14 + 2);
        cr_assert_eq(memcmp(b.data, "hrec", 4), 0);
        cr_assert_eq(b.data[OFF_LEN], 128);
        cr_assert_eq(b.data[OFF_LISTEN_LEN], 14);
        cr_assert_eq(b.data[OFF_PENDING_LEN], 2);
        cr_assert_eq(handover_record_decode(b.data, b.len, &LIMITS, &back, &used, &reason), 0, "%s", reason);
        cr_assert_eq(used, b.len);
        expect_same(&rec, &back);
        free(b.data);
}

/* A telnet command cut by the hand-over: its bytes begun again go in front of the input, and
 * the reader finds them there, as its first bytes. */
Test(record, the_input_head_comes_first_in_the_input) {
        HandoverRecord rec = small_record(), back;
        const char *reason = NULL;
        size_t used = 0;

        rec.input = (const uint8_t *) "\xf6x\n";
        rec.input_len = 3;
        rec.input_head[0] = 0xff;
        rec.input_head_len = 1;
        HandoverBuf b = encode(&rec);
        cr_assert_eq(b.len, 112 + 14 + 2 + 4);
        cr_assert_eq(handover_record_decode(b.data, b.len, &LIMITS, &back, &used, &reason), 0, "%s", reason);
        cr_assert_eq(back.input_len, 4);
        cr_assert_eq(memcmp(back.input, "\xff\xf6x\n", 4), 0);
        cr_assert_eq(back.input_head_len, 0, "a decoded record has its head in its input");
        free(b.data);

        rec.input = NULL;
        rec.input_len = 0;
        b = encode(&rec);
        cr_assert_eq(handover_record_decode(b.data, b.len, &LIMITS, &back, &used, &reason), 0, "%s", reason);
        cr_assert_eq(back.input_len, 1, "a head alone is input");
        free(b.data);
}

/* Inside a telnet subnegotiation: the bytes of it skipped so far, in 4 bytes after the output
 * (only then: a record outside one is as it was before the flag). */
Test(record, a_subnegotiation_count_comes_after_the_output) {
        HandoverRecord rec = small_record(), back;
        const char *reason = NULL;
        size_t used = 0;

        rec.flags = HANDOVER_SUBNEGOTIATION;
        rec.subnegotiation_len = 0x3a;
        HandoverBuf b = encode(&rec);
        cr_assert_eq(b.len, 112 + 14 + 2 + 4);
        cr_assert_eq(b.data[b.len - 8], 0x3a);
        cr_assert_eq(handover_record_decode(b.data, b.len, &LIMITS, &back, &used, &reason), 0, "%s", reason);
        cr_assert_eq(used, b.len);
        expect_same(&rec, &back);
        free(b.data);

        rec.flags = 0; /* the count goes with the flag only */
        b = encode(&rec);
        cr_assert_eq(b.len, 112 + 14 + 2);
        cr_assert_eq(handover_record_decode(b.data, b.len, &LIMITS, &back, &used, &reason), 0, "%s", reason);
        cr_assert_eq(back.subnegotiation_len, 0);
        free(b.data);
}

Test(record, random_round_trips_reencode_identically) {
        static Strings s;

        for (int i = 0; i < 2000; i++) {
                HandoverRecord rec = random_record(&s), back;
                HandoverBuf b = encode(&rec), again = { 0 };
                const char *reason = NULL;
                size_t used = 0;

                cr_assert_eq(handover_record_decode(b.data, b.len, &LIMITS, &back, &used, &reason), 0,
                             "round %d: %s", i, reason);
                cr_assert_eq(used, b.len);
                expect_same(&rec, &back);
                cr_assert_eq(handover_record_encode(&again, &back), 0);
                cr_assert_eq(again.len, b.len);
                cr_assert_eq(memcmp(again.data, b.data, b.len), 0, "round %d: re-encoded differently", i);
                free(again.data);
                free(b.data);
        }
}

Test(record, encoder_refuses_what_the_format_cannot_hold) {
        HandoverRecord rec = small_record();
        HandoverBuf b = { 0 };

        rec.id = 0;
        cr_expect_eq(handover_record_encode(&b, &rec), -EINVAL);
        rec = small_record();
        rec.peer.ss_family = AF_UNIX;
        cr_expect_eq(handover_record_encode(&b, &rec), -EINVAL);
        rec = small_record();
        rec.end = _PROTO_END_LAST + 1;
        cr_expect_eq(handover_record_encode(&b, &rec), -EINVAL);
        rec = small_record();
        rec.flags = 1u << 7;
        cr_expect_eq(handover_record_encode(&b, &rec), -EINVAL);
        rec = small_record();
        rec.listen_len = 70000;
        cr_expect_eq(handover_record_encode(&b, &rec), -EINVAL);
        cr_expect_eq(b.len, 0, "a refused record left bytes behind");
        free(b.data);
}

/* ---- corrupt, truncated, foreign ------------------------------------------------------------ */

/* A 32-bit CRC catches every single-bit error, and a flipped length moves the checksum's place:
 * so every flip is refused, none merely decodes to something else. */
Test(record, every_single_bit_flip_is_refused) {
        static Strings s;

        for (int round = 0; round < 6; round++) {
                HandoverRecord rec = round == 0 ? small_record() : random_record(&s);
                HandoverBuf b = encode(&rec);
                size_t bits = b.len * 8;

                /* Long records: every bit of the fixed part and the strings' starts, then a sample. */
                for (size_t bit = 0; bit < bits; bit += bit < 4096 ? 1 : 1 + rnd_below(61)) {
                        b.data[bit / 8] ^= (uint8_t) (1u << (bit % 8));
                        decode_fails(b.data, b.len, &LIMITS, NULL);
                        b.data[bit / 8] ^= (uint8_t) (1u << (bit % 8));
                }
                free(b.data);
        }
}

Test(record, every_prefix_is_refused) {
        static Strings s;

        for (int round = 0; round < 4; round++) {
                HandoverRecord rec = round == 0 ? small_record() : random_record(&s);
                HandoverBuf b = encode(&rec);

                for (size_t n = 0; n < b.len; n++)
                        decode_fails(b.data, n, &LIMITS, n < 8 ? "truncated" : NULL);
                free(b.data);
        }
}

Test(record, random_bytes_and_another_magic_are_refused) {
        uint8_t junk[512];
        HandoverRecord rec = small_record();
        HandoverBuf b = encode(&rec);

        for (int i = 0; i < 5000; i++) {
                size_t n = rnd_below(sizeof(junk));
                fill(junk, n);
                if (n >= 4 && (rnd() & 1))
                        memcpy(junk, "hrec", 4); /* get past the magic at least */
                decode_fails(junk, n, &LIMITS, NULL);
        }
        memcpy(b.data, "HREC", 4);
        reseal(b.data, b.len);
        decode_fails(b.data, b.len, &LIMITS, "bad magic");
        free(b.data);
}

/* ---- hostile: a right checksum over wrong fields --------------------------------------------- */

static void expect_hostile(void (*patch)(HandoverRecord *rec), const HandoverLimits *limits, const char *why) {
        HandoverRecord rec = small_record();

        patch(&rec);
        HandoverBuf b = encode(&rec);
        decode_fails(b.data, b.len, limits, why);
        free(b.data);
}

static void lines_over_messages(HandoverRecord *r) {
        r->lines = r->messages + 1;
}
static void pending_with_lf(HandoverRecord *r) {
        r->pending = (const uint8_t *) "a\nb";
        r->pending_len = 3;
}
static void pending_too_long(HandoverRecord *r) {
        static uint8_t line[66];
        memset(line, 'z', sizeof(line));
        r->pending = line;
        r->pending_len = 66;
}
static void pending_at_limit_without_cr(HandoverRecord *r) {
        static uint8_t line[65];
        memset(line, 'z', sizeof(line));
        r->pending = line;
        r->pending_len = 65;
}
static void chunk_framing(HandoverRecord *r) {
        r->framing = FRAMING_CHUNK;
}
static void too_much_input(HandoverRecord *r) {
        static uint8_t in[4097];
        r->input = in;
        r->input_len = sizeof(in);
}
static void too_much_output(HandoverRecord *r) {
        static uint8_t out[16385];
        r->output = out;
        r->output_len = sizeof(out);
}
static void discarded_not_lingering(HandoverRecord *r) {
        r->discarded = 1;
}
static void lingering_after_eof(HandoverRecord *r) {
        r->flags = HANDOVER_LINGERING;
        r->end = PROTO_END_EOF;
        r->pending_len = 0;
}
static void lingering_with_pending(HandoverRecord *r) {
        r->flags = HANDOVER_LINGERING;
        r->end = PROTO_END_EXIT;
}
/* A lingering close waits a second at most: a record saying an hour would hold its socket and
 * its slot for that hour in the pools. */
static void lingering_for_an_hour(HandoverRecord *r) {
        r->flags = HANDOVER_LINGERING;
        r->end = PROTO_END_EXIT;
        r->pending_len = 0;
        r->deadline_left_usec = 3600u * 1000000u;
}
static void lingering_for_ever(HandoverRecord *r) {
        lingering_for_an_hour(r);
        r->deadline_left_usec = HANDOVER_NO_DEADLINE;
}
static void want_write_without_output(HandoverRecord *r) {
        r->flags = HANDOVER_WANT_WRITE;
}
static void logged_not_lingering(HandoverRecord *r) {
        r->flags = HANDOVER_LOGGED;
}
static void balancer_own_not_via_a_balancer(HandoverRecord *r) {
        r->flags = HANDOVER_BALANCER_OWN;
}
static void subnegotiation_in_chunk_framing(HandoverRecord *r) {
        r->framing = FRAMING_CHUNK;
        r->pending_len = 0;
        r->flags = HANDOVER_SUBNEGOTIATION;
}
static void subnegotiation_after_the_end(HandoverRecord *r) {
        r->end = PROTO_END_EXIT;
        r->flags = HANDOVER_SUBNEGOTIATION;
}
static void subnegotiation_over_max_line_length(HandoverRecord *r) {
        r->flags = HANDOVER_SUBNEGOTIATION;
        r->subnegotiation_len = 65;
}
static void empty_listen(HandoverRecord *r) {
        r->listen_len = 0;
}
static void unprintable_listen(HandoverRecord *r) {
        r->listen = "127.0.0.1\n9999";
}
static void deadline_past_any_timeout(HandoverRecord *r) {
        r->deadline_left_usec = (uint64_t) CONF_IDLE_TIMEOUT_MAX * 1000000u + 1;
}
static void deadline_that_wraps_the_clock(HandoverRecord *r) {
        r->deadline_left_usec = HANDOVER_NO_DEADLINE - 1;
}
static void long_listen(HandoverRecord *r) {
        static char name[HANDOVER_LISTEN_MAX + 1];
        memset(name, 'a', sizeof(name));
        r->listen = name;
        r->listen_len = sizeof(name);
}

Test(hostile, fields_a_live_session_cannot_have) {
        expect_hostile(lines_over_messages, &LIMITS, "more lines answered than messages");
        expect_hostile(pending_with_lf, &LIMITS, "line feed");
        expect_hostile(pending_too_long, &LIMITS, "pending line longer than max_line_length");
        expect_hostile(pending_at_limit_without_cr, &LIMITS, "pending line longer than max_line_length");
        expect_hostile(chunk_framing, &LIMITS, "chunk framing, the configuration now says line");
        expect_hostile(too_much_input, &LIMITS, "more unread input");
        expect_hostile(too_much_output, &LIMITS, "more unsent output");
        expect_hostile(discarded_not_lingering, &LIMITS, "not lingering");
        expect_hostile(lingering_after_eof, &LIMITS, "does not linger");
        expect_hostile(lingering_with_pending, &LIMITS, "data still to handle");
        expect_hostile(lingering_for_an_hour, &LIMITS, "lingering longer than");
        expect_hostile(lingering_for_ever, &LIMITS, "lingering longer than");
        expect_hostile(want_write_without_output, &LIMITS, "no output");
        expect_hostile(logged_not_lingering, &LIMITS, "not lingering");
        expect_hostile(balancer_own_not_via_a_balancer, &LIMITS, "not through a balancer");
        HandoverLimits chunk = LIMITS;
        chunk.framing = FRAMING_CHUNK;
        expect_hostile(subnegotiation_in_chunk_framing, &chunk, "subnegotiation in chunk framing");
        expect_hostile(subnegotiation_after_the_end, &LIMITS, "subnegotiation after the end");
        expect_hostile(subnegotiation_over_max_line_length, &LIMITS, "subnegotiation longer than max_line_length");
        expect_hostile(empty_listen, &LIMITS, "listener name");
        expect_hostile(unprintable_listen, &LIMITS, "listener name");
        expect_hostile(long_listen, &LIMITS, "listener name");
        expect_hostile(deadline_past_any_timeout, &LIMITS, "deadline");
        expect_hostile(deadline_that_wraps_the_clock, &LIMITS, "deadline");
}

/* A close taken up after a crash lingers with its end unknown (handoff_session_fresh); handed
 * over within its second, its record must be taken up again, not refused. */
Test(hostile, a_lingering_close_whose_end_a_crash_lost_is_accepted) {
        HandoverRecord rec = small_record(), back;
        const char *reason = NULL;

        rec.flags = HANDOVER_LINGERING;
        rec.end = PROTO_END_NONE;
        rec.pending_len = 0;
        rec.deadline_left_usec = 400000;
        HandoverBuf b = encode(&rec);
        cr_assert_eq(handover_record_decode(b.data, b.len, &LIMITS, &back, NULL, &reason), 0, "%s", reason);
        cr_assert_eq(back.end, PROTO_END_NONE);
        cr_assert(back.flags & HANDOVER_LINGERING);
        free(b.data);
}

/* A smaller max_line_length in the new configuration refuses a pending line the old allowed. */
Test(hostile, limits_of_the_new_configuration_apply) {
        HandoverLimits small = LIMITS;
        HandoverRecord rec = small_record();
        static uint8_t line[40];

        memset(line, 'q', sizeof(line));
        rec.pending = line;
        rec.pending_len = sizeof(line);
        small.max_line_length = 16;
        HandoverBuf b = encode(&rec);
        HandoverRecord back;
        cr_assert_eq(handover_record_decode(b.data, b.len, &LIMITS, &back, NULL, NULL), 0);
        decode_fails(b.data, b.len, &small, NULL);
        free(b.data);
}

Test(hostile, raw_fields_out_of_range) {
        HandoverRecord rec = small_record();
        HandoverBuf b = encode(&rec);
        static uint8_t copy[1024]; /* gcc's -Warray-bounds under ASan took malloc(b.len) for empty */
        struct {
                size_t off;
                uint8_t value;
                const char *why;
        } cases[] = {
                { 16, 2, "chunk framing" },       /* framing 2 is neither, so not the configured one */
                { 17, _PROTO_END_LAST + 1, "unknown end reason" }, /* end past the last ProtoEnd */
                { 18, 64, "unknown flags" },      /* flag bit 6 */
                { 19, 5, "neither IPv4 nor IPv6" }, /* family */
                { 26, 1, "stray bytes" },         /* IPv4 address byte 5 */
        };

        cr_assert_leq(b.len, sizeof(copy));
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                memcpy(copy, b.data, b.len);
                copy[cases[i].off] = cases[i].value;
                reseal(copy, b.len);
                decode_fails(copy, b.len, &LIMITS, i == 0 ? NULL : cases[i].why);
        }
        /* id 0 */
        memcpy(copy, b.data, b.len);
        memset(copy + 8, 0, 8);
        reseal(copy, b.len);
        decode_fails(copy, b.len, &LIMITS, "connection id 0");
        /* An id that the next ones would wrap from. */
        memcpy(copy, b.data, b.len);
        memset(copy + 8, 0xff, 8);
        reseal(copy, b.len);
        decode_fails(copy, b.len, &LIMITS, "connection id beyond 2^63");
        free(b.data);
}

Test(hostile, lengths_of_2_32_minus_1) {
        HandoverRecord rec = small_record();
        HandoverBuf b = encode(&rec);
        uint8_t *copy = malloc(b.len + 64);

        /* The record's own length. */
        memcpy(copy, b.data, b.len);
        put32(copy + OFF_LEN, UINT32_MAX);
        decode_fails(copy, b.len, &LIMITS, "truncated");
        /* ... even when a caller claims the data is that long: the limits bound it first. */
        decode_fails(copy, SIZE_MAX, &LIMITS, "longer than the limits allow");
        /* Shorter than the fixed fields. */
        put32(copy + OFF_LEN, 111);
        decode_fails(copy, b.len, &LIMITS, "below the fixed fields");
        /* The pending line's length, with the checksum made right. */
        memcpy(copy, b.data, b.len);
        put32(copy + OFF_PENDING_LEN, UINT32_MAX);
        reseal(copy, b.len);
        decode_fails(copy, b.len, &LIMITS, "past the end of the record");
        /* The listener name's length (u16). */
        memcpy(copy, b.data, b.len);
        copy[OFF_LISTEN_LEN] = 0xff, copy[OFF_LISTEN_LEN + 1] = 0xff;
        reseal(copy, b.len);
        decode_fails(copy, b.len, &LIMITS, "past the end of the record");
        /* A pending length one short: the fields end before the record does. */
        memcpy(copy, b.data, b.len);
        put32(copy + OFF_PENDING_LEN, 1);
        reseal(copy, b.len);
        decode_fails(copy, b.len, &LIMITS, NULL);
        /* A record longer than its fields: 4 bytes slipped in before the checksum. */
        memcpy(copy, b.data, b.len - 4);
        memset(copy + b.len - 4, 0, 4);
        put32(copy + OFF_LEN, (uint32_t) b.len + 4);
        reseal(copy, b.len + 4);
        decode_fails(copy, b.len + 4, &LIMITS, "longer than its fields");
        free(copy);
        free(b.data);
}

Test(hostile, limits_that_overflow_saturate) {
        HandoverLimits huge = LIMITS;

        huge.max_line_length = SIZE_MAX;
        huge.input_max = SIZE_MAX;
        huge.records_max = SIZE_MAX;
        cr_assert_eq(handover_record_size_max(&huge), SIZE_MAX);
        cr_assert_eq(handover_state_size_max(&huge), SIZE_MAX);
        cr_assert_lt(handover_state_size_max(&LIMITS), 1024u * (112 + 4 + 79 + 65 + 4096 + 16384) + 200);
        cr_assert_gt(handover_state_size_max(&LIMITS), 1024u * (112 + 4 + 79 + 65 + 4096 + 16384));
}

/* ---- the state file --------------------------------------------------------------------------- */

static const uint8_t BOOT[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };

static HandoverBuf state_of(size_t n, Strings *strings) {
        HandoverHeader h = { .written_usec = 123456789, .next_id = 5000 };
        HandoverBuf b = { 0 };

        memcpy(h.boot_id, BOOT, 16);
        snprintf(h.writer, sizeof(h.writer), "hellod 0.1.0");
        cr_assert_eq(handover_state_begin(&b, &h), 0);
        for (size_t i = 0; i < n; i++) {
                HandoverRecord rec = strings ? random_record(&strings[i]) : small_record();
                if (!strings)
                        rec.id = i + 1;
                cr_assert_eq(handover_state_add(&b, &rec), 0);
        }
        cr_assert_eq(handover_state_finish(&b), 0);
        return b;
}

/* state_verdict: -1 when the whole state is refused, else how many records decode. */
static int state_verdict(const uint8_t *data, size_t size, const HandoverLimits *limits, char *err, size_t err_size) {
        HandoverState st;
        int good = 0;

        if (handover_state_decode(data, size, limits, BOOT, &st, err, err_size) < 0)
                return -1;
        for (size_t i = 0; i < st.header.count; i++) {
                HandoverRecord rec;
                if (handover_state_record(&st, i, limits, &rec, NULL) == 0)
                        good++;
        }
        handover_state_done(&st);
        return good;
}

Test(state, round_trip) {
        static Strings strings[20];
        HandoverBuf b = state_of(20, strings);
        HandoverState st;
        char err[256] = "";

        cr_assert_eq(handover_state_decode(b.data, b.len, &LIMITS, BOOT, &st, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(st.header.version, 1);
        cr_assert_eq(st.header.count, 20);
        cr_assert_eq(st.header.next_id, 5000);
        cr_assert_eq(st.header.written_usec, 123456789);
        cr_assert_str_eq(st.header.writer, "hellod 0.1.0");
        cr_assert_eq(handover_gap_usec(&st.header, 123456789 + 1500), 1500);
        cr_assert_eq(handover_gap_usec(&st.header, 5), 0);
        for (size_t i = 0; i < 20; i++) {
                HandoverRecord rec;
                const char *reason = NULL;
                cr_assert_eq(handover_state_record(&st, i, &LIMITS, &rec, &reason), 0, "%zu: %s", i, reason);
                cr_assert_eq(memcmp(rec.listen, strings[i].listen, rec.listen_len), 0);
        }
        handover_state_done(&st);
        free(b.data);

        b = state_of(0, NULL); /* nothing to hand over is a valid state too */
        cr_assert_eq(state_verdict(b.data, b.len, &LIMITS, err, sizeof(err)), 0, "%s", err);
        free(b.data);
}

Test(state, every_single_bit_flip_costs_a_record_or_all) {
        HandoverBuf b = state_of(3, NULL);
        char err[256];

        for (size_t bit = 0; bit < b.len * 8; bit++) {
                b.data[bit / 8] ^= (uint8_t) (1u << (bit % 8));
                int good = state_verdict(b.data, b.len, &LIMITS, err, sizeof(err));
                cr_assert_lt(good, 3, "bit %zu flipped and every record still decodes", bit);
                b.data[bit / 8] ^= (uint8_t) (1u << (bit % 8));
        }
        cr_assert_eq(state_verdict(b.data, b.len, &LIMITS, err, sizeof(err)), 3);
        free(b.data);
}

Test(state, every_prefix_is_refused_and_trailing_bytes_too) {
        HandoverBuf b = state_of(3, NULL);
        char err[256];

        for (size_t n = 0; n < b.len; n++)
                cr_assert_eq(state_verdict(b.data, n, &LIMITS, err, sizeof(err)), -1, "prefix of %zu bytes", n);
        uint8_t *longer = malloc(b.len + 1);
        memcpy(longer, b.data, b.len);
        longer[b.len] = 0;
        cr_assert_eq(state_verdict(longer, b.len + 1, &LIMITS, err, sizeof(err)), -1);
        cr_assert(strstr(err, "1 bytes after the last record"), "%s", err);
        free(longer);
        free(b.data);
}

static void reseal_header(uint8_t *data) {
        size_t len = 53 + data[48];

        reseal(data, len);
}

Test(state, foreign_version_magic_and_boot) {
        HandoverBuf b = state_of(1, NULL);
        HandoverState st;
        char err[256];

        /* A newer format: refused before anything else is read, naming both versions. */
        b.data[8] = 2;
        cr_assert_eq(handover_state_decode(b.data, b.len, &LIMITS, BOOT, &st, err, sizeof(err)), -EPROTONOSUPPORT);
        cr_assert(strstr(err, "version 2") && strstr(err, "version 1"), "%s", err);
        /* Even a newer format whose header is shorter than ours. */
        cr_assert_eq(handover_state_decode(b.data, 12, &LIMITS, BOOT, &st, err, sizeof(err)), -EPROTONOSUPPORT);
        b.data[8] = 1;
        memcpy(b.data, "hellodXX", 8);
        cr_assert_eq(handover_state_decode(b.data, b.len, &LIMITS, BOOT, &st, err, sizeof(err)), -EBADMSG);
        cr_assert(strstr(err, "not a hellod state file"), "%s", err);
        memcpy(b.data, "hellodST", 8);
        uint8_t other[16] = { 0 };
        cr_assert_eq(handover_state_decode(b.data, b.len, &LIMITS, other, &st, err, sizeof(err)), -EBADMSG);
        cr_assert(strstr(err, "another boot"), "%s", err);
        cr_assert_eq(handover_state_decode(b.data, b.len, &LIMITS, NULL, &st, err, sizeof(err)), 0, "%s", err);
        handover_state_done(&st);
        free(b.data);

        uint8_t junk[256];
        for (int i = 0; i < 2000; i++) {
                size_t n = rnd_below(sizeof(junk));
                fill(junk, n);
                if (n >= 12 && (rnd() & 1))
                        memcpy(junk, "hellodST\x01\0\0\0", 12);
                cr_assert_eq(state_verdict(junk, n, &LIMITS, err, sizeof(err)), -1);
        }
}

/* A writer that could not read its boot id (the packaged unit's ProcSubset=pid hides
 * /proc/sys) writes zeros: that says "unknown", not "another boot", to a reader that can read
 * its own (a drop-in that relaxes the sandbox, then a restart). Once refused: every
 * conversation closed at that restart. */
/* empty_state: a state of no record, written by "hellod 0.1.0" with BOOT_ID and NEXT_ID. */
static HandoverBuf empty_state(const uint8_t *boot_id, uint64_t next_id) {
        HandoverHeader h = { .written_usec = 1, .next_id = next_id };
        HandoverBuf b = { 0 };

        memcpy(h.boot_id, boot_id, 16);
        snprintf(h.writer, sizeof(h.writer), "hellod 0.1.0");
        cr_assert_eq(handover_state_begin(&b, &h), 0);
        cr_assert_eq(handover_state_finish(&b), 0);
        return b;
}

Test(state, a_writer_without_a_boot_id_is_not_another_boot) {
        static const uint8_t unknown[16] = { 0 };
        HandoverBuf b = empty_state(unknown, 2);
        HandoverState st;
        char err[256] = "";

        cr_assert_eq(handover_state_decode(b.data, b.len, &LIMITS, BOOT, &st, err, sizeof(err)), 0, "%s", err);
        handover_state_done(&st);
        cr_assert_eq(handover_state_decode(b.data, b.len, &LIMITS, unknown, &st, err, sizeof(err)), 0, "%s", err);
        handover_state_done(&st);
        free(b.data);
}

/* A next id the new process would count on from and wrap to 0 (then 1, 2, ... meeting the
 * resumed ones: two connections under one store name). */
Test(state, a_next_id_that_would_wrap_is_refused) {
        HandoverBuf b = empty_state(BOOT, HANDOVER_ID_MAX);
        HandoverState st;
        char err[256] = "";

        cr_assert_eq(handover_state_decode(b.data, b.len, &LIMITS, BOOT, &st, err, sizeof(err)), 0, "%s", err);
        handover_state_done(&st);
        free(b.data);

        b = empty_state(BOOT, HANDOVER_ID_MAX + 1);
        cr_assert_eq(handover_state_decode(b.data, b.len, &LIMITS, BOOT, &st, err, sizeof(err)), -EBADMSG);
        cr_assert(strstr(err, "next connection id beyond 2^63"), "%s", err);
        free(b.data);
}

Test(state, hostile_counts) {
        HandoverBuf b = state_of(2, NULL);
        char err[256];

        put32(b.data + 12, UINT32_MAX);
        reseal_header(b.data);
        cr_assert_eq(state_verdict(b.data, b.len, &LIMITS, err, sizeof(err)), -1);
        cr_assert(strstr(err, "more than max_connections"), "%s", err);
        HandoverLimits many = LIMITS;
        many.records_max = SIZE_MAX;
        cr_assert_eq(state_verdict(b.data, b.len, &many, err, sizeof(err)), -1);
        cr_assert(strstr(err, "cannot fit"), "%s", err);
        put32(b.data + 12, 3); /* one more than there is */
        reseal_header(b.data);
        cr_assert_eq(state_verdict(b.data, b.len, &LIMITS, err, sizeof(err)), -1);
        cr_assert(strstr(err, "3 records cannot fit"), "%s", err);
        put32(b.data + 12, 1); /* one fewer: the second is trailing garbage */
        reseal_header(b.data);
        cr_assert_eq(state_verdict(b.data, b.len, &LIMITS, err, sizeof(err)), -1);
        cr_assert(strstr(err, "after the last record"), "%s", err);
        free(b.data);
}

/* A record's length that breaks the framing costs the whole state: nothing after it can be
 * found. */
Test(state, a_bad_record_length_refuses_all) {
        HandoverBuf b = state_of(3, NULL);
        size_t second = 53 + strlen("hellod 0.1.0") + 128;
        char err[256];

        put32(b.data + second + 4, 0xffff);
        cr_assert_eq(state_verdict(b.data, b.len, &LIMITS, err, sizeof(err)), -1);
        cr_assert(strstr(err, "record 2 of 3 has a bad length"), "%s", err);
        put32(b.data + second + 4, 20);
        cr_assert_eq(state_verdict(b.data, b.len, &LIMITS, err, sizeof(err)), -1);
        cr_assert(strstr(err, "record 2 of 3 has a bad length"), "%s", err);
        free(b.data);
}

/* A record longer than the next process's limits allow (a restart that lowered max_line_length
 * while a client held a large backlog of replies) costs its connection only: the state's
 * framing holds, and the other records are resumed. It used to refuse the whole state. */
Test(state, a_record_over_the_new_limits_is_refused_alone) {
        static uint8_t output[LIMITS_OUTPUT_LARGE];
        HandoverHeader h = { .written_usec = 123456789, .next_id = 5000 };
        HandoverBuf b = { 0 };
        HandoverState st;
        HandoverRecord rec = small_record();
        HandoverLimits large = LIMITS;
        const char *reason = NULL;
        char err[256];

        large.output_max = sizeof(output);
        memcpy(h.boot_id, BOOT, 16);
        snprintf(h.writer, sizeof(h.writer), "hellod 0.1.0");
        cr_assert_eq(handover_state_begin(&b, &h), 0);
        for (uint64_t id = 1; id <= 3; id++) {
                rec.id = id;
                rec.output = id == 2 ? output : NULL;
                rec.output_len = id == 2 ? sizeof(output) : 0;
                cr_assert_eq(handover_state_add(&b, &rec), 0);
        }
        cr_assert_eq(handover_state_finish(&b), 0);
        cr_assert_eq(state_verdict(b.data, b.len, &large, err, sizeof(err)), 3, "%s", err);

        cr_assert_eq(handover_state_decode(b.data, b.len, &LIMITS, BOOT, &st, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(handover_state_record(&st, 0, &LIMITS, &rec, &reason), 0);
        cr_assert_eq(rec.id, 1);
        cr_assert_eq(handover_state_record(&st, 1, &LIMITS, &rec, &reason), -EBADMSG);
        cr_assert_str_eq(reason, "record longer than the limits allow");
        cr_assert_eq(handover_state_record(&st, 2, &LIMITS, &rec, &reason), 0);
        cr_assert_eq(rec.id, 3);
        handover_state_done(&st);
        free(b.data);
}

/* One damaged record costs its connection only. */
Test(state, a_damaged_record_is_refused_alone) {
        HandoverBuf b = state_of(3, NULL);
        HandoverState st;
        HandoverRecord rec;
        const char *reason = NULL;
        char err[256];

        size_t second = 53 + strlen("hellod 0.1.0") + 128;
        b.data[second + 40] ^= 0x10;
        cr_assert_eq(handover_state_decode(b.data, b.len, &LIMITS, BOOT, &st, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(handover_state_record(&st, 0, &LIMITS, &rec, &reason), 0);
        cr_assert_eq(rec.id, 1);
        cr_assert_eq(handover_state_record(&st, 1, &LIMITS, &rec, &reason), -EBADMSG);
        cr_assert_str_eq(reason, "checksum mismatch");
        cr_assert_eq(handover_state_record(&st, 2, &LIMITS, &rec, &reason), 0);
        cr_assert_eq(rec.id, 3);
        cr_assert_eq(handover_state_record(&st, 3, &LIMITS, &rec, &reason), -EBADMSG);
        handover_state_done(&st);
        free(b.data);
}

/* ---- names and the configuration's fingerprint -------------------------------------------------- */

Test(fdname, connection_names) {
        char buf[HANDOVER_FDNAME_MAX];
        HandoverConnName conn = { .id = 42 };

        cr_assert_str_eq(handover_fdname_conn(&conn, buf, sizeof(buf)), "c42");
        conn.id = HANDOVER_ID_MAX;
        cr_assert_str_eq(handover_fdname_conn(&conn, buf, sizeof(buf)), "c9223372036854775807");
        conn.id = 0;
        cr_assert(handover_fdname_parse_conn(buf, &conn));
        cr_assert_eq(conn.id, HANDOVER_ID_MAX);
        cr_assert_not(conn.via_balancer);
        cr_assert(handover_fdname_parse_conn("c1", &conn) && conn.id == 1 && !conn.ended);
        conn.ended = true; /* a conversation over, its last replies on their way */
        cr_assert_str_eq(handover_fdname_conn(&conn, buf, sizeof(buf)), "c1.end");
        conn = (HandoverConnName) { 0 };
        cr_assert(handover_fdname_parse_conn(buf, &conn) && conn.id == 1 && conn.ended && !conn.via_balancer);
        const char *bad[] = { "c1.end.end", "c1.END", "c1.en", "c1end", "c1.endx", ".end", "c.end", "c0.end", "c", "c0", "c01", "c-1", "c+1", "c1x", "c 1", "C1", "1", "",
                              "c9223372036854775808", /* past HANDOVER_ID_MAX: the next ids would wrap */
                              "c18446744073709551615", "c18446744073709551616", "c99999999999999999999", "state", "hellod",
                              /* behind a balancer: a family, then exactly its digits, lowercase */
                              "c1b5", "c1b4", "c1b4c0a8000101bb0", "c1b4c0a8000101b", "c1b4C0A8000101BB",
                              "c1b4c0a80001g1bb", "c1bb", "c1b6c0a8000101bb", "c0b", "c01b", "cb" };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                cr_expect_not(handover_fdname_parse_conn(bad[i], &conn), "'%s' parsed", bad[i]);
}

/* Behind a balancer the crash mode's name says what the PROXY header said: the client (its
 * address and port in hex), or that the connection is the balancer's own. */
Test(fdname, names_behind_a_balancer) {
        char buf[HANDOVER_FDNAME_MAX];
        HandoverConnName conn = { .id = 7, .via_balancer = true }, back;
        struct sockaddr_in *in = (struct sockaddr_in *) &conn.client;
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &conn.client;

        in->sin_family = AF_INET;
        in->sin_port = htons(443);
        in->sin_addr.s_addr = htonl(0xc0a80001); /* 192.168.0.1 */
        cr_assert_str_eq(handover_fdname_conn(&conn, buf, sizeof(buf)), "c7b4c0a8000101bb");
        cr_assert(handover_fdname_parse_conn(buf, &back));
        cr_assert(back.id == 7 && back.via_balancer && !back.balancer_own);
        cr_assert_eq(back.client.ss_family, AF_INET);
        cr_assert_eq(memcmp(&back.client, &conn.client, sizeof(struct sockaddr_in)), 0);

        memset(&conn.client, 0, sizeof(conn.client));
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(65535);
        inet_pton(AF_INET6, "2001:db8::ff", &in6->sin6_addr);
        in6->sin6_scope_id = 3; /* a PROXY header has none: not named */
        conn.id = HANDOVER_ID_MAX; /* the longest name a reader takes */
        cr_assert_str_eq(handover_fdname_conn(&conn, buf, sizeof(buf)),
                         "c9223372036854775807b620010db80000000000000000000000ffffff");
        cr_assert(handover_fdname_parse_conn(buf, &back));
        cr_assert_eq(back.client.ss_family, AF_INET6);
        cr_assert_eq(memcmp(&back.client, &conn.client, offsetof(struct sockaddr_in6, sin6_scope_id)), 0);
        cr_assert_eq(((struct sockaddr_in6 *) &back.client)->sin6_scope_id, 0);
        conn.ended = true; /* the longest name of all */
        cr_assert_str_eq(handover_fdname_conn(&conn, buf, sizeof(buf)),
                         "c9223372036854775807b620010db80000000000000000000000ffffff.end");
        cr_assert_lt(strlen(buf), HANDOVER_FDNAME_MAX);
        cr_assert(handover_fdname_parse_conn(buf, &back) && back.ended && back.id == HANDOVER_ID_MAX);
        conn.ended = false;

        conn.balancer_own = true; /* no client named */
        conn.id = 9;
        cr_assert_str_eq(handover_fdname_conn(&conn, buf, sizeof(buf)), "c9b");
        cr_assert(handover_fdname_parse_conn(buf, &back));
        cr_assert(back.id == 9 && back.via_balancer && back.balancer_own);

        conn.balancer_own = false; /* a client of no IP family goes unnamed */
        conn.client.ss_family = AF_UNIX;
        cr_assert_str_eq(handover_fdname_conn(&conn, buf, sizeof(buf)), "c9");
}

/* Each name has one spelling: random ones come back as they went, and a name damaged at random
 * (a byte changed, dropped or added) is refused or read as a name that is spelled so. */
Test(fdname, every_name_comes_back_as_it_went) {
        static const char alphabet[] = "0123456789abcdefABb46x:c.end";

        for (int i = 0; i < 2000; i++) {
                char buf[HANDOVER_FDNAME_MAX], again[HANDOVER_FDNAME_MAX], damaged[HANDOVER_FDNAME_MAX + 1];
                HandoverConnName conn = { .id = (rnd() >> rnd_below(64)) & HANDOVER_ID_MAX, .via_balancer = rnd() & 1 },
                                 back;

                conn.id += conn.id == 0;
                conn.balancer_own = conn.via_balancer && rnd_below(3) == 0;
                conn.ended = rnd() & 1;
                random_address(&conn.client); /* the name has no scope id: it comes back as it went */
                cr_assert(handover_fdname_parse_conn(handover_fdname_conn(&conn, buf, sizeof(buf)), &back), "%s", buf);
                cr_assert_str_eq(handover_fdname_conn(&back, again, sizeof(again)), buf);
                cr_assert(back.id == conn.id && back.via_balancer == conn.via_balancer &&
                          back.balancer_own == conn.balancer_own && back.ended == conn.ended);
                cr_assert(handover_fdname_is_stored(buf));

                size_t len = strlen(buf), at = rnd_below(len + 1);
                char c = alphabet[rnd_below(sizeof(alphabet) - 1)];
                memcpy(damaged, buf, len + 1);
                if (at < len && rnd() % 3 == 0)
                        damaged[at] = c;
                else if (at < len && rnd() & 1)
                        memmove(damaged + at, damaged + at + 1, len - at);
                else {
                        memmove(damaged + at + 1, damaged + at, len - at + 1);
                        damaged[at] = c;
                }
                if (handover_fdname_parse_conn(damaged, &back))
                        cr_assert_str_eq(handover_fdname_conn(&back, again, sizeof(again)), damaged,
                                         "'%s' read as another spelling", damaged);
        }
}

Test(fdname, the_stored_namespace) {
        const char *stored[] = { "state", "state2", "c1", "c0", "c9x" };
        const char *other[] = { "hellod", "hellod.socket", "hellod6", "c", "cx", "bogus", "dgram", "" };

        for (size_t i = 0; i < sizeof(stored) / sizeof(stored[0]); i++)
                cr_expect(handover_fdname_is_stored(stored[i]), "'%s'", stored[i]);
        for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++)
                cr_expect_not(handover_fdname_is_stored(other[i]), "'%s'", other[i]);
}

Test(conf_hash, changes_with_what_shapes_the_bytes) {
        Conf a = { .framing = FRAMING_LINE, .max_line_length = 1024, .greeting = (char *) "Welcome!",
                   .reply_prefix = (char *) "Hello, ", .reply_suffix = (char *) "!" };
        Conf b = a;
        uint64_t h = handover_conf_hash(&a);

        cr_assert_eq(handover_conf_hash(&b), h);
        b.reply_suffix = (char *) "!!";
        cr_assert_neq(handover_conf_hash(&b), h);
        b = a;
        b.reply_prefix = (char *) "Hello,";
        b.reply_suffix = (char *) " !";
        cr_assert_neq(handover_conf_hash(&b), h, "the split between prefix and suffix counts");
        b = a;
        b.framing = FRAMING_CHUNK;
        cr_assert_neq(handover_conf_hash(&b), h);
        b = a;
        b.max_line_length = 1023;
        cr_assert_neq(handover_conf_hash(&b), h);
}

/* ---- what a passed descriptor is (listener.c) ------------------------------------------------------ */

#include "listener.h"

Test(inherit, classify) {
        HandoverConnName id = { 0 };

        /* A listening socket is a listener, whatever its name. */
        cr_expect_eq(inherit_classify("hellod", FD_KIND_LISTENING_TCP, &id), INHERIT_LISTENER);
        cr_expect_eq(inherit_classify("c5", FD_KIND_LISTENING_TCP, &id), INHERIT_LISTENER);
        cr_expect_eq(inherit_classify("state", FD_KIND_LISTENING_TCP, &id), INHERIT_LISTENER);
        /* What the store keeps, when name and kind agree. */
        cr_expect_eq(inherit_classify("state", FD_KIND_REGULAR, &id), INHERIT_STATE);
        cr_expect_eq(inherit_classify("c17", FD_KIND_CONNECTED_TCP, &id), INHERIT_CONNECTION);
        cr_expect_eq(id.id, 17);
        cr_expect_eq(inherit_classify("c18b4c0a8000101bb", FD_KIND_CONNECTED_TCP, &id), INHERIT_CONNECTION);
        cr_expect(id.id == 18 && id.via_balancer && !id.balancer_own);
        cr_expect(id.client.ss_family == AF_INET &&
                  ((struct sockaddr_in *) &id.client)->sin_addr.s_addr == htonl(0xc0a80001) &&
                  ((struct sockaddr_in *) &id.client)->sin_port == htons(443));
        /* Ours by name, unusable: closed and removed. */
        cr_expect_eq(inherit_classify("state", FD_KIND_CONNECTED_TCP, &id), INHERIT_UNKNOWN_STORED);
        cr_expect_eq(inherit_classify("state", FD_KIND_OTHER, &id), INHERIT_UNKNOWN_STORED);
        cr_expect_eq(inherit_classify("state-v2", FD_KIND_REGULAR, &id), INHERIT_UNKNOWN_STORED);
        cr_expect_eq(inherit_classify("c17", FD_KIND_REGULAR, &id), INHERIT_UNKNOWN_STORED);
        cr_expect_eq(inherit_classify("c0", FD_KIND_CONNECTED_TCP, &id), INHERIT_UNKNOWN_STORED);
        cr_expect_eq(inherit_classify("c007", FD_KIND_CONNECTED_TCP, &id), INHERIT_UNKNOWN_STORED);
        cr_expect_eq(inherit_classify("c99999999999999999999", FD_KIND_CONNECTED_TCP, &id), INHERIT_UNKNOWN_STORED);
        /* Not ours, not a listener: the misconfigured socket unit of before. */
        cr_expect_eq(inherit_classify("bogus", FD_KIND_OTHER, &id), INHERIT_INVALID);
        cr_expect_eq(inherit_classify("dgram", FD_KIND_OTHER, &id), INHERIT_INVALID);
        cr_expect_eq(inherit_classify("hellod", FD_KIND_CONNECTED_TCP, &id), INHERIT_INVALID);
        cr_expect_eq(inherit_classify("unknown", FD_KIND_REGULAR, &id), INHERIT_INVALID);
}

/* ---- reading the state from its descriptor (handoff.c) ----------------------------------------- */

#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "handoff.h"

static long max_rss_kib(void) {
        struct rusage ru;

        cr_assert_eq(getrusage(RUSAGE_SELF, &ru), 0);
        return ru.ru_maxrss;
}

/* sealed_memfd: SIZE bytes (DATA, or a hole when NULL), sealed as handoff_memfd_fill() leaves
 * the state. */
static int sealed_memfd(const uint8_t *data, size_t size) {
        int fd = memfd_create("test-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);

        cr_assert_geq(fd, 0);
        cr_assert_eq(ftruncate(fd, (off_t) size), 0);
        if (data)
                cr_assert_eq(pwrite(fd, data, size, 0), (ssize_t) size);
        cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL), 0);
        return fd;
}

/* mapping_is_private: the mapping at ADDR is private ('p' in /proc/self/maps), not shared. */
static bool mapping_is_private(const void *addr) {
        FILE *maps = fopen("/proc/self/maps", "r");
        unsigned long start, end;
        char perms[8];
        bool found = false, private = false;

        cr_assert_not_null(maps);
        while (!found && fscanf(maps, "%lx-%lx %7s%*[^\n]", &start, &end, perms) == 3)
                if ((unsigned long) addr >= start && (unsigned long) addr < end) {
                        found = true;
                        private = perms[3] == 'p';
                }
        fclose(maps);
        cr_assert(found, "no mapping at %p", addr);
        return private;
}

/* A state's size is the writer's word, like the rest of it: 256 MiB of zeros where the state
 * should be cost the reader one page, not 256 MiB copied before the header is looked at (the
 * next start would meet the same state after an out-of-memory kill, and the one after). In a
 * child of its own, so that its peak memory is the reading's alone. */
Test(read, a_sealed_state_is_mapped_not_copied) {
        pid_t pid = fork();

        cr_assert_geq(pid, 0);
        if (pid == 0) {
                const size_t size = 256u << 20;
                int fd = sealed_memfd(NULL, size);
                long before = max_rss_kib();
                StateBytes bytes;
                HandoverState st;
                char err[256] = "";

                if (handoff_read_state(fd, SIZE_MAX, &bytes) < 0 || bytes.size != size)
                        _exit(2);
                if (handover_state_decode(bytes.data, bytes.size, &LIMITS, BOOT, &st, err, sizeof(err)) != -EBADMSG)
                        _exit(3);
                long grown = max_rss_kib() - before;
                handoff_state_release(&bytes);
                _exit(grown < 16384 ? 0 : 4);
        }
        int status = 0;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status));
        cr_assert_eq(WEXITSTATUS(status), 0, "child: %d (2: not read, 3: not refused, 4: copied)", WEXITSTATUS(status));
}

/* A state mapped or copied reads the same: one that can be sealed no more (a memfd made
 * without sealing, a file) is copied, one bigger than the limit refused. */
Test(read, sealed_or_not_the_bytes_are_the_state) {
        HandoverBuf b = state_of(3, NULL);
        int unsealed = memfd_create("test-state", MFD_CLOEXEC);
        int fds[2] = { sealed_memfd(b.data, b.len), unsealed };
        StateBytes bytes;

        cr_assert_eq(pwrite(unsealed, b.data, b.len, 0), (ssize_t) b.len);
        for (int i = 0; i < 2; i++) {
                char err[256] = "";
                cr_assert_eq(handoff_read_state(fds[i], b.len, &bytes), 0);
                cr_expect_eq(bytes.mapped, i == 0);
                /* Shared, it would not map at all before Linux 6.7 (Debian 12 runs 6.1): a shared
                 * mapping of a memfd sealed against writes failed with EPERM, read-only or not. */
                if (bytes.mapped)
                        cr_expect(mapping_is_private(bytes.data));
                cr_assert_eq(bytes.size, b.len);
                cr_expect_eq(memcmp(bytes.data, b.data, b.len), 0);
                cr_expect_eq(state_verdict(bytes.data, bytes.size, &LIMITS, err, sizeof(err)), 3, "%s", err);
                handoff_state_release(&bytes);
                cr_expect_null(bytes.data);
                cr_expect_eq(handoff_read_state(fds[i], b.len - 1, &bytes), -EFBIG);
                close(fds[i]);
        }
        free(b.data);
}
