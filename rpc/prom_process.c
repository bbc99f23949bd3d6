/* prom_process.c: the series every mrank process exposes besides its own metrics:
 * mrank_build_info (version, revision, component) and the standard process_* metrics of the
 * Prometheus client libraries (CPU seconds, resident and virtual memory, open and maximum file
 * descriptors, start time), read from /proc/self on every scrape.
 *
 * A value /proc cannot give (another OS, a sandbox without /proc) is left out rather than
 * reported as 0; the rest still renders. See prom.h for mr_prom_process. */
#define _GNU_SOURCE
#include "prom.h"
#include "version.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Fields 14 (utime), 15 (stime), 22 (starttime, ticks since boot) and 23 (vsize) of
 * /proc/self/stat. The command name (field 2) may hold spaces and parentheses: parse after
 * its last ')'. 0, or -1 when unreadable. */
static int read_stat(double *cpu_s, double *start_ticks, double *vsize) {
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return -1;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    /* after ')': field 3 (state) onwards */
    unsigned long long v[24] = {0};
    int field = 3;
    for (char *tok = strtok(p + 1, " "); tok && field <= 23; tok = strtok(NULL, " "), field++)
        v[field] = strtoull(tok, NULL, 10);
    if (field <= 23) return -1;
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0) return -1;
    *cpu_s = (double)(v[14] + v[15]) / (double)hz;
    *start_ticks = (double)v[22] / (double)hz;
    *vsize = (double)v[23];
    return 0;
}

/* Boot time (seconds since the epoch) from the btime line of /proc/stat, or -1. */
static double boot_time(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    char line[256];
    double bt = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "btime ", 6)) {
            bt = strtod(line + 6, NULL);
            break;
        }
    fclose(f);
    return bt;
}

/* Resident set size in bytes (second field of /proc/self/statm, in pages), or -1. */
static double resident_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    unsigned long long size = 0, rss = 0;
    int ok = fscanf(f, "%llu %llu", &size, &rss) == 2;
    fclose(f);
    long page = sysconf(_SC_PAGESIZE);
    return ok && page > 0 ? (double)rss * (double)page : -1;
}

/* Entries of /proc/self/fd (the directory's own descriptor excluded), or -1. */
static long open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1;
}

void mr_prom_process(mr_prom_text *t, const char *component) {
    mr_prom_family(t, "mrank_build_info", "gauge",
                   "Always 1; the labels say which build of mrank is running.");
    mr_prom_printf(t, "mrank_build_info{version=\"%s\",revision=\"%s\",component=\"%s\"} 1\n",
                   mr_version(), mr_git_revision(), component ? component : "");
    double cpu = 0, start = 0, vsize = 0, bt = boot_time();
    if (!read_stat(&cpu, &start, &vsize)) {
        mr_prom_family(t, "process_cpu_seconds_total", "counter",
                       "Total user and system CPU time spent in seconds.");
        mr_prom_printf(t, "process_cpu_seconds_total %.2f\n", cpu);
        mr_prom_family(t, "process_virtual_memory_bytes", "gauge",
                       "Virtual memory size in bytes.");
        mr_prom_printf(t, "process_virtual_memory_bytes %.0f\n", vsize);
        if (bt >= 0) {
            mr_prom_family(t, "process_start_time_seconds", "gauge",
                           "Start time of the process since unix epoch in seconds.");
            mr_prom_printf(t, "process_start_time_seconds %.2f\n", bt + start);
        }
    }
    double rss = resident_bytes();
    if (rss >= 0) {
        mr_prom_family(t, "process_resident_memory_bytes", "gauge",
                       "Resident memory size in bytes.");
        mr_prom_printf(t, "process_resident_memory_bytes %.0f\n", rss);
    }
    long fds = open_fds();
    if (fds >= 0) {
        mr_prom_family(t, "process_open_fds", "gauge", "Number of open file descriptors.");
        mr_prom_printf(t, "process_open_fds %ld\n", fds);
    }
    long maxfd = sysconf(_SC_OPEN_MAX);
    if (maxfd > 0) {
        mr_prom_family(t, "process_max_fds", "gauge",
                       "Maximum number of open file descriptors.");
        mr_prom_printf(t, "process_max_fds %ld\n", maxfd);
    }
}
