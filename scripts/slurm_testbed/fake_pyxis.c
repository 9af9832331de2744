/* The SLURM testbed's pyxis stand-in: a SPANK plugin that accepts pyxis' --container-* options on srun/sbatch and
 * "imports" an image stand-in: a directory (a Python environment) whose bin/ goes first on the task's PATH, in place
 * of the login environment's PATH. It runs no container. Every task it starts is recorded, one line each, in the file
 * named by the plugin argument `log=PATH`:
 *     job <TAB> step <TAB> container name <TAB> image <TAB> workdir <TAB> mounts <TAB> argv joined by \x1f
 * so the tests can compare what executed with what `gemma3-launch render` printed.
 * Learnt from the shared reference fake_pyxis.c (testbeds/slurm in the project's reference material), which only
 * exported the flags; this one also enforces the image and the working directory, and records the argv. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <slurm/spank.h>
SPANK_PLUGIN(fake_pyxis, 1);

enum { IMAGE, MOUNTS, WORKDIR, NAME, ENV, NO_MOUNT_HOME, N_OPTS };
static const char *env_names[N_OPTS] = {"FAKE_PYXIS_IMAGE", "FAKE_PYXIS_MOUNTS", "FAKE_PYXIS_WORKDIR",
                                        "FAKE_PYXIS_NAME", "FAKE_PYXIS_ENV", "FAKE_PYXIS_NO_MOUNT_HOME"};
static char *values[N_OPTS];
static char log_path[4096];

static int take(int val, const char *optarg, int remote) {
    if (val < 0 || val >= N_OPTS) return -1;
    free(values[val]);
    values[val] = strdup(optarg ? optarg : "1");
    return 0;
}

static struct spank_option options[] = {
    {"container-image", "[USER@][REGISTRY#]IMAGE[:TAG]|PATH", "fake pyxis: image (a directory here)", 1, IMAGE, take},
    {"container-mounts", "SRC:DST[:FLAGS][,...]", "fake pyxis: mounts (recorded)", 1, MOUNTS, take},
    {"container-workdir", "PATH", "fake pyxis: working directory", 1, WORKDIR, take},
    {"container-name", "NAME", "fake pyxis: container name (recorded)", 1, NAME, take},
    {"container-env", "NAME[,NAME...]", "fake pyxis: environment names (recorded)", 1, ENV, take},
    {"no-container-mount-home", NULL, "fake pyxis: no home mount", 0, NO_MOUNT_HOME, take},
    SPANK_OPTIONS_TABLE_END};

int slurm_spank_init(spank_t sp, int ac, char **av) {
    for (int i = 0; i < ac; i++)
        if (strncmp(av[i], "log=", 4) == 0) snprintf(log_path, sizeof log_path, "%s", av[i] + 4);
    for (int i = 0; options[i].name; i++)
        if (spank_option_register(sp, &options[i]) != ESPANK_SUCCESS) return -1;
    return 0;
}

/* Before the tasks start: the image's environment replaces the job's PATH (as a container's would). */
int slurm_spank_user_init(spank_t sp, int ac, char **av) {
    if (!values[IMAGE]) return 0;
    char bin[4096];
    struct stat st;
    snprintf(bin, sizeof bin, "%s/bin/python3", values[IMAGE]);
    if (stat(bin, &st) != 0) {
        slurm_error("fake pyxis: image %s is not an image stand-in (no bin/python3)", values[IMAGE]);
        return -1;
    }
    char path[8192];
    snprintf(path, sizeof path, "%s/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", values[IMAGE]);
    spank_setenv(sp, "PATH", path, 1);
    spank_unsetenv(sp, "VIRTUAL_ENV");
    spank_unsetenv(sp, "PYTHONPATH");
    spank_unsetenv(sp, "PYTHONHOME");
    for (int i = 0; i < N_OPTS; i++)
        if (values[i]) spank_setenv(sp, env_names[i], values[i], 1);
    return 0;
}

static void record(spank_t sp) {
    if (!log_path[0]) return;
    uint32_t job = 0, step = 0;
    int argc = 0;
    char **argv = NULL;
    spank_get_item(sp, S_JOB_ID, &job);
    spank_get_item(sp, S_JOB_STEPID, &step);
    if (spank_get_item(sp, S_JOB_ARGV, &argc, &argv) != ESPANK_SUCCESS) argc = 0;
    size_t size = 65536;
    char *line = calloc(1, size);
    if (!line) return;
    int n = snprintf(line, size, "%u\t%u\t%s\t%s\t%s\t%s\t", job, step, values[NAME] ? values[NAME] : "",
                     values[IMAGE], values[WORKDIR] ? values[WORKDIR] : "", values[MOUNTS] ? values[MOUNTS] : "");
    for (int i = 0; i < argc && n > 0 && (size_t)n < size; i++)
        n += snprintf(line + n, size - n, "%s%s", i ? "\x1f" : "", argv[i]);
    if (n > 0 && (size_t)n < size - 1) {
        line[n++] = '\n';
        int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT, 0644);
        if (fd >= 0) {
            if (write(fd, line, n) < 0) slurm_error("fake pyxis: cannot write %s", log_path);
            close(fd);
        }
    }
    free(line);
}

/* In each task, just before exec: enter the working directory and record what runs. */
int slurm_spank_task_init(spank_t sp, int ac, char **av) {
    if (!values[IMAGE]) return 0;
    if (values[WORKDIR] && chdir(values[WORKDIR]) != 0) {
        slurm_error("fake pyxis: cannot enter container workdir %s", values[WORKDIR]);
        return -1;
    }
    record(sp);
    return 0;
}
