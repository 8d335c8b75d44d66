/* QEMU TCG plugin (user mode, API version 1 as in QEMU 7.2): where the guest's instructions go.
 * Counts executions of every translated block and writes, at exit, one line per block:
 * "vaddr instructions_in_block executions". scripts/arm-cost/profile.sh maps the addresses to
 * function symbols. Single-threaded runs only (counters are not atomic).
 * Build: gcc -shared -fPIC -O2 -o insnprofile.so insnprofile.c
 * Use:   qemu-aarch64 -plugin ./insnprofile.so,out=FILE PROG ARGS */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*tb_trans_cb)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*udata_cb)(qemu_plugin_id_t, void *);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, tb_trans_cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, enum qemu_plugin_op, void *, uint64_t);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, udata_cb, void *);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

struct block { uint64_t vaddr, n, execs; };
static struct block **blocks;
static size_t len, cap;
static char out_path[512];

static void on_tb(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    struct block *b = calloc(1, sizeof *b);
    if (!b) return;
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->n = qemu_plugin_tb_n_insns(tb);
    if (len == cap) {
        size_t c = cap ? 2 * cap : 4096;
        struct block **nb = realloc(blocks, c * sizeof *nb);
        if (!nb) { free(b); return; }
        blocks = nb, cap = c;
    }
    blocks[len++] = b;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->execs, 1);
}

static void at_exit_report(qemu_plugin_id_t id, void *p) {
    FILE *f = out_path[0] ? fopen(out_path, "w") : stderr;
    if (!f) f = stderr;
    for (size_t i = 0; i < len; i++)
        if (blocks[i]->execs)
            fprintf(f, "%llx %llu %llu\n", (unsigned long long)blocks[i]->vaddr,
                    (unsigned long long)blocks[i]->n, (unsigned long long)blocks[i]->execs);
    if (f != stderr) fclose(f);
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (!strncmp(argv[i], "out=", 4)) snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb);
    qemu_plugin_register_atexit_cb(id, at_exit_report, NULL);
    return 0;
}
