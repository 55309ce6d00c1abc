/* bench/disk.c - random-read bandwidth of a file with O_DIRECT, the disk term of the roofline.
 * Build: cc -O2 -pthread bench/disk.c -o /tmp/disk
 * Usage: /tmp/disk FILE [block_bytes=1835008] [threads=32] [seconds=5]
 * Prints GB/s of aligned random reads of block_bytes with `threads` reads in flight. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *path;
static uint64_t block, size;
static double seconds;
static uint64_t total[256];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *reader(void *arg) {
    int id = (int)(intptr_t)arg;
    int fd = open(path, O_RDONLY | O_DIRECT);
    void *buf;
    if (fd < 0 || posix_memalign(&buf, 4096, block)) return NULL;
    uint64_t s = 0x9e3779b97f4a7c15ull * (uint64_t)(id + 1);
    double end = now() + seconds;
    while (now() < end) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        uint64_t off = (s % ((size - block) / 4096)) * 4096;
        ssize_t r = pread(fd, buf, block, (off_t)off);
        if (r > 0) total[id] += (uint64_t)r;
    }
    close(fd);
    free(buf);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [block_bytes] [threads] [seconds]\n", argv[0]);
        return 1;
    }
    path = argv[1];
    block = argc > 2 ? strtoull(argv[2], NULL, 10) : 1835008;
    block = (block + 4095) / 4096 * 4096;
    int threads = argc > 3 ? atoi(argv[3]) : 32;
    seconds = argc > 4 ? atof(argv[4]) : 5;
    if (threads < 1 || threads > 256) threads = 32;
    struct stat st;
    if (stat(path, &st) || (uint64_t)st.st_size < block * 2) {
        fprintf(stderr, "%s: missing or too small\n", path);
        return 1;
    }
    size = (uint64_t)st.st_size;
    pthread_t t[256];
    double t0 = now();
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, reader, (void *)(intptr_t)i);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    double dt = now() - t0;
    uint64_t sum = 0;
    for (int i = 0; i < threads; i++) sum += total[i];
    printf("%.3f\n", sum / dt / 1e9);
    fprintf(stderr, "disk: %s, %llu-byte random O_DIRECT reads, %d in flight: %.3f GB/s\n", path,
            (unsigned long long)block, threads, sum / dt / 1e9);
    return 0;
}
