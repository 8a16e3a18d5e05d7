// Greedy decoding through llama.cpp's C API that prints the token ids, so that
// scripts/llama-cpp-check.sh can compare llama.cpp with `btx generate --show-ids` token for
// token (llama.cpp's own tools print only the text).
//
// usage: greedy_ids MODEL.gguf N_TOKENS THREADS PROMPT
// prints: "prompt: ID ..." then "ids: ID ..." (the prompt tokenised without BOS and without
// parsing special tokens: the tokens `btx generate` feeds its model, so that the comparison is
// of the two computations), and
// "stop: ID" when an end-of-generation token ended the output.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static void quiet(enum ggml_log_level, const char *, void *) {}

int main(int argc, char ** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL.gguf N_TOKENS THREADS PROMPT\n", argv[0]);
        return 2;
    }
    const int n_new = atoi(argv[2]);
    const int threads = atoi(argv[3]);
    const std::string prompt = argv[4];
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_prompt = -llama_tokenize(vocab, prompt.c_str(), prompt.size(), nullptr, 0, false, false);
    std::vector<llama_token> toks(n_prompt);
    if (llama_tokenize(vocab, prompt.c_str(), prompt.size(), toks.data(), toks.size(), false, false) < 0) {
        fprintf(stderr, "cannot tokenize the prompt\n");
        return 1;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_prompt + n_new + 1;
    cp.n_batch = cp.n_ctx;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "cannot create a context\n");
        return 1;
    }
    printf("prompt:");
    for (llama_token t : toks) printf(" %d", t);
    printf("\nids:");
    const int n_vocab = llama_vocab_n_tokens(vocab);
    llama_batch batch = llama_batch_get_one(toks.data(), toks.size());
    llama_token next = 0;
    for (int i = 0; i < n_new; i++) {
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "llama_decode failed\n");
            return 1;
        }
        const float * logits = llama_get_logits_ith(ctx, -1);
        next = 0;
        for (int v = 1; v < n_vocab; v++) {
            if (logits[v] > logits[next]) next = v;
        }
        // An end-of-generation token ends the output unprinted (as btx generate does), named
        // on its own line so that a comparison can tell why the output ended.
        if (llama_vocab_is_eog(vocab, next)) {
            printf("\nstop: %d", next);
            break;
        }
        printf(" %d", next);
        batch = llama_batch_get_one(&next, 1);
    }
    printf("\n");
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
