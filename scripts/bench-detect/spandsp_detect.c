/* SpanDSP's DTMF receiver (dtmf_rx) over a 16-bit 8 kHz mono WAV file, read incrementally:
 * the reference side of scripts/bench-detect.sh. Prints the digits on one line, as
 * `callverify dtmf detect` does, so the script can compare them.
 *
 * Build: cc -O2 spandsp_detect.c -lspandsp -o spandsp_detect   (Debian: libspandsp-dev)
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <spandsp.h>

/* Bytes read per read(2): the same 256 KiB callverify reads. */
#define CHUNK (256 << 10)

static char *digits;
static size_t digits_len, digits_cap;

static void on_digits(void *user_data, const char *d, int len)
{
    (void) user_data;
    if (digits_len + (size_t) len + 1 > digits_cap) {
        digits_cap = (digits_len + (size_t) len + 1) * 2;
        digits = realloc(digits, digits_cap);
        if (digits == NULL) {
            perror("realloc");
            exit(2);
        }
    }
    memcpy(digits + digits_len, d, (size_t) len);
    digits_len += (size_t) len;
}

static int read_full(int fd, uint8_t *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n <= 0)
            return -1;
        got += (size_t) n;
    }
    return 0;
}

static uint32_t le32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t) p[3] << 24; }
static uint16_t le16(const uint8_t *p) { return (uint16_t) (p[0] | p[1] << 8); }

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s FILE.wav (16-bit PCM, 8 kHz, mono)\n", argv[0]);
        return 2;
    }
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) {
        perror(argv[1]);
        return 2;
    }
    uint8_t header[12], chunk[8], fmt[16];
    int have_fmt = 0;
    if (read_full(fd, header, 12) || memcmp(header, "RIFF", 4) || memcmp(header + 8, "WAVE", 4)) {
        fprintf(stderr, "%s: not a WAV file\n", argv[1]);
        return 2;
    }
    /* Chunks up to "data"; "fmt " must say 16-bit PCM, 8000 Hz, one channel. */
    uint32_t data_len;
    for (;;) {
        if (read_full(fd, chunk, 8)) {
            fprintf(stderr, "%s: no data chunk\n", argv[1]);
            return 2;
        }
        uint32_t len = le32(chunk + 4);
        if (!memcmp(chunk, "data", 4)) {
            data_len = len;
            break;
        }
        if (!memcmp(chunk, "fmt ", 4) && len >= 16) {
            if (read_full(fd, fmt, 16))
                return 2;
            have_fmt = 1;
            len -= 16;
        }
        if (lseek(fd, (off_t) (len + (len & 1)), SEEK_CUR) < 0)
            return 2;
    }
    if (!have_fmt || le16(fmt) != 1 || le16(fmt + 2) != 1 || le32(fmt + 4) != 8000 || le16(fmt + 14) != 16) {
        fprintf(stderr, "%s: not 16-bit PCM, 8000 Hz, mono\n", argv[1]);
        return 2;
    }
    dtmf_rx_state_t *rx = dtmf_rx_init(NULL, on_digits, NULL);
    if (rx == NULL)
        return 2;
    static int16_t samples[CHUNK / 2];
    uint64_t left = data_len;
    while (left > 0) {
        size_t want = left < CHUNK ? (size_t) left : CHUNK;
        ssize_t n = read(fd, samples, want);
        if (n <= 0)
            break;
        left -= (uint64_t) n;
        /* The WAV is little-endian, as is every machine this runs on (x86-64, arm64). */
        dtmf_rx(rx, samples, (int) (n / 2));
    }
    close(fd);
    fwrite(digits ? digits : "", 1, digits_len, stdout);
    putchar('\n');
    dtmf_rx_free(rx);
    return 0;
}
