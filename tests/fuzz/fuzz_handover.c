/* fuzz_handover: the decoder of the state handed to the next process (src/handover.c), on
 * arbitrary bytes, as the resume side meets them.
 *
 * Input format:
 *   byte 0   bit 0      framing of the reader's configuration: 0 line, 1 chunk
 *            bits 1-2   its max_line_length: 1, 16, 1024 or 65536
 *            bit 3      0: the bytes are a state file; 1: one record
 *            bit 7      reseal: recompute every checksum first (the header's, and each record's
 *                       where its length field puts it), as a buggy or hostile writer would, so
 *                       that the fuzzer gets past the checksums to the fields behind them
 *   rest     the bytes
 *
 * It checks, with abort() so that libFuzzer reports it:
 *   - decoding never crashes, reads out of bounds or leaks (ASan, UBSan);
 *   - a refusal always has a reason;
 *   - an accepted record keeps to the reader's limits (pending line, input, output, discarded,
 *     listener name) and to the invariants of a live session;
 *   - decode∘encode is the identity on what was accepted: an accepted record encodes back to
 *     exactly the bytes it was decoded from (so decode∘encode∘decode is stable), and a state file
 *     whose records all decode is rebuilt byte for byte from its header and records. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handover.h"
#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define check(cond, ...)                                                                                 \
        do {                                                                                             \
                if (!(cond)) {                                                                           \
                        fprintf(stderr, "fuzz_handover: check failed: %s (%s:%d)\n", #cond, __FILE__,   \
                                __LINE__);                                                               \
                        fprintf(stderr, "fuzz_handover: " __VA_ARGS__);                                  \
                        fputc('\n', stderr);                                                             \
                        abort();                                                                         \
                }                                                                                        \
        } while (0)

#define HEADER_FIXED 53
#define RECORD_FIXED 112

static uint32_t le32(const uint8_t *p) {
        return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}

static void put32(uint8_t *p, uint32_t v) {
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}

static void seal(uint8_t *p, size_t len) {
        put32(p + len - 4, handover_crc32c(0, p, len - 4));
}

/* reseal_record: the checksum of the record at P, if its length field fits in what is left. */
static size_t reseal_record(uint8_t *p, size_t left) {
        if (left < 8)
                return left;
        size_t len = le32(p + 4);
        if (len < 4 || len > left)
                return left;
        seal(p, len);
        return len;
}

static void reseal_state(uint8_t *p, size_t size) {
        if (size < HEADER_FIXED)
                return;
        size_t pos = HEADER_FIXED + p[48];
        if (pos > size)
                return;
        seal(p, pos);
        while (pos < size)
                pos += reseal_record(p + pos, size - pos);
}

static void check_record(const HandoverRecord *rec, const HandoverLimits *limits) {
        check(rec->id != 0 && rec->id <= HANDOVER_ID_MAX, "id %llu accepted", (unsigned long long) rec->id);
        check(rec->framing == limits->framing, "framing %d accepted", (int) rec->framing);
        check(rec->end >= PROTO_END_NONE && rec->end <= _PROTO_END_LAST, "end %d", rec->end);
        check(rec->lines <= rec->messages, "lines over messages");
        check(!(rec->flags & HANDOVER_BALANCER_OWN) || (rec->flags & HANDOVER_VIA_BALANCER),
              "a balancer's own connection not through a balancer");
        check(rec->deadline_left_usec == HANDOVER_NO_DEADLINE ||
                      rec->deadline_left_usec <= (uint64_t) CONF_IDLE_TIMEOUT_MAX * 1000000u,
              "deadline %llu µs away", (unsigned long long) rec->deadline_left_usec);
        check(!(rec->flags & HANDOVER_LINGERING) || rec->deadline_left_usec <= limits->linger_max_usec,
              "lingering %llu µs", (unsigned long long) rec->deadline_left_usec);
        check(rec->listen_len >= 1 && rec->listen_len <= HANDOVER_LISTEN_MAX, "listen of %zu", rec->listen_len);
        check(rec->pending_len <= limits->max_line_length + 1, "pending of %zu", rec->pending_len);
        check(rec->pending_len == 0 || !memchr(rec->pending, '\n', rec->pending_len), "LF in pending");
        check(rec->input_len <= limits->input_max, "input of %zu", rec->input_len);
        check(rec->output_len <= limits->output_max, "output of %zu", rec->output_len);
        check(rec->discarded <= limits->discard_max, "discarded %u", rec->discarded);
        check(rec->peer.ss_family == AF_INET || rec->peer.ss_family == AF_INET6, "family %d",
              rec->peer.ss_family);
        if (rec->flags & HANDOVER_LINGERING)
                check(rec->pending_len + rec->input_len + rec->output_len == 0, "lingering with data");
        if (rec->flags & HANDOVER_SUBNEGOTIATION)
                check(rec->framing == FRAMING_LINE && rec->end == PROTO_END_NONE &&
                              rec->subnegotiation_len <= limits->max_line_length,
                      "a subnegotiation of %u bytes", rec->subnegotiation_len);
        else
                check(rec->subnegotiation_len == 0, "a subnegotiation count without its flag");
}

/* check_reencodes: REC encodes back to the LEN bytes at P it came from. */
static void check_reencodes(const HandoverRecord *rec, const uint8_t *p, size_t len, const HandoverLimits *limits) {
        HandoverBuf b = { 0 };
        HandoverRecord again;
        size_t used = 0;

        check(handover_record_encode(&b, rec) == 0, "an accepted record cannot be encoded");
        check(b.len == len && memcmp(b.data, p, len) == 0, "re-encoded to %zu other bytes (of %zu)", b.len, len);
        check(handover_record_decode(b.data, b.len, limits, &again, &used, NULL) == 0 && used == len,
              "the re-encoded record is refused");
        free(b.data);
}

static void fuzz_record(const uint8_t *p, size_t size, const HandoverLimits *limits) {
        HandoverRecord rec;
        const char *reason = NULL;
        size_t used = 0;

        if (handover_record_decode(p, size, limits, &rec, &used, &reason) < 0) {
                check(reason && *reason, "refused without a reason");
                return;
        }
        check(used >= RECORD_FIXED && used <= size, "used %zu of %zu", used, size);
        check_record(&rec, limits);
        check_reencodes(&rec, p, used, limits);
}

static void fuzz_state(const uint8_t *p, size_t size, const HandoverLimits *limits) {
        HandoverState st;
        HandoverBuf b = { 0 };
        char err[256] = "";
        size_t good = 0;

        if (handover_state_decode(p, size, limits, NULL, &st, err, sizeof(err)) < 0) {
                check(err[0] != '\0', "state refused without a reason");
                return;
        }
        check(st.header.version == HANDOVER_VERSION && st.header.count <= limits->records_max, "header");
        check(handover_state_begin(&b, &st.header) == 0, "the accepted header cannot be written");
        for (size_t i = 0; i < st.header.count; i++) {
                HandoverRecord rec;
                const char *reason = NULL;

                if (handover_state_record(&st, i, limits, &rec, &reason) < 0) {
                        check(reason && *reason, "record refused without a reason");
                        continue;
                }
                check_record(&rec, limits);
                size_t end = i + 1 < st.header.count ? st.offsets[i + 1] : size;
                check_reencodes(&rec, p + st.offsets[i], end - st.offsets[i], limits);
                check(handover_state_add(&b, &rec) == 0, "add");
                good++;
        }
        check(handover_state_finish(&b) == 0, "finish");
        if (good == st.header.count)
                check(b.len == size && memcmp(b.data, p, size) == 0, "the state rebuilt differs");
        free(b.data);
        handover_state_done(&st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static const size_t line_max[4] = { 1, 16, 1024, 65536 };
        HandoverLimits limits;
        uint8_t *copy;

        if (size < 1)
                return 0;
        uint8_t mode = data[0];
        limits = (HandoverLimits) {
                .framing = mode & 1 ? FRAMING_CHUNK : FRAMING_LINE,
                .max_line_length = line_max[(mode >> 1) & 3],
                .output_max = 16384,
                .discard_max = 65536,
                .records_max = 64,
                .linger_max_usec = 1000000,
        };
        /* session_input_size(): 4 KiB, or in chunk framing one message with its CRLF and a byte. */
        limits.input_max = limits.framing == FRAMING_CHUNK ? limits.max_line_length + 3 : 4096;

        /* A copy of exactly the bytes, so that ASan sees any read past them. */
        size--;
        copy = malloc(size ? size : 1);
        if (!copy)
                return 0;
        memcpy(copy, data + 1, size);
        if (mode & 0x80) {
                if (mode & 8)
                        (void) reseal_record(copy, size);
                else
                        reseal_state(copy, size);
        }
        if (mode & 8)
                fuzz_record(copy, size, &limits);
        else
                fuzz_state(copy, size, &limits);
        free(copy);
        return 0;
}
