"""d2l's small BERT written faithfully in PyTorch, for bench_step.py: post-LN
encoder blocks, attention projections without bias, ReLU FFN, sinusoidal
positions (d2l.PositionalEncoding), MLM head Dense(relu) -> LayerNorm ->
Dense(vocab) on gathered rows, NSP head Dense(tanh) -> Dense(2) on <cls>,
the book's loss (weighted MLM cross-entropy over real slots + NSP)."""
import math

import torch
from torch import nn


class MultiHeadAttention(nn.Module):
    def __init__(self, num_hiddens, num_heads, dropout):
        super().__init__()
        self.num_heads = num_heads
        self.W_q, self.W_k, self.W_v, self.W_o = (
            nn.Linear(num_hiddens, num_hiddens, bias=False) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def forward(self, X, key_mask):
        B, T, H = X.shape
        N = self.num_heads

        def split(Y):  # (B, T, H) -> (B, N, T, d)
            return Y.reshape(B, T, N, H // N).transpose(1, 2)
        q, k, v = split(self.W_q(X)), split(self.W_k(X)), split(self.W_v(X))
        scores = q @ k.transpose(-1, -2) / math.sqrt(H // N)
        scores = scores.masked_fill(~key_mask[:, None, None, :], -1e6)
        out = self.dropout(torch.softmax(scores, dim=-1)) @ v
        return self.W_o(out.transpose(1, 2).reshape(B, T, H))


class EncoderBlock(nn.Module):
    def __init__(self, num_hiddens, ffn_num_hiddens, num_heads, dropout):
        super().__init__()
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout)
        self.ln1, self.ln2 = nn.LayerNorm(num_hiddens), nn.LayerNorm(num_hiddens)
        self.ffn = nn.Sequential(nn.Linear(num_hiddens, ffn_num_hiddens), nn.ReLU(),
                                 nn.Linear(ffn_num_hiddens, num_hiddens))
        self.dropout = nn.Dropout(dropout)

    def forward(self, X, key_mask):
        Y = self.ln1(X + self.dropout(self.attention(X, key_mask)))
        return self.ln2(Y + self.dropout(self.ffn(Y)))


class BERTModel(nn.Module):
    def __init__(self, vocab_size, num_hiddens=128, ffn_num_hiddens=256, num_heads=2,
                 num_layers=2, dropout=0.2, max_len=1000):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, num_hiddens)
        self.segment_embedding = nn.Embedding(2, num_hiddens)
        X = torch.arange(max_len, dtype=torch.float32).reshape(-1, 1) / torch.pow(
            10000, torch.arange(0, num_hiddens, 2, dtype=torch.float32) / num_hiddens)
        P = torch.zeros(1, max_len, num_hiddens)
        P[:, :, 0::2], P[:, :, 1::2] = torch.sin(X), torch.cos(X)
        self.register_buffer('P', P)
        self.dropout = nn.Dropout(dropout)
        self.blks = nn.ModuleList(EncoderBlock(num_hiddens, ffn_num_hiddens, num_heads,
                                               dropout) for _ in range(num_layers))
        self.mlm = nn.Sequential(nn.Linear(num_hiddens, num_hiddens), nn.ReLU(),
                                 nn.LayerNorm(num_hiddens), nn.Linear(num_hiddens, vocab_size))
        self.nsp = nn.Sequential(nn.Linear(num_hiddens, num_hiddens), nn.Tanh(),
                                 nn.Linear(num_hiddens, 2))

    def encode(self, tokens, segments, valid_lens):
        T = tokens.shape[1]
        X = self.token_embedding(tokens) + self.segment_embedding(segments)
        X = self.dropout(X + self.P[:, :T, :])
        key_mask = torch.arange(T)[None, :] < valid_lens[:, None]
        for blk in self.blks:
            X = blk(X, key_mask)
        return X

    def forward(self, tokens, segments, valid_lens, pred_positions):
        X = self.encode(tokens, segments, valid_lens)
        rows = torch.arange(X.shape[0])[:, None]
        mlm_Y_hat = self.mlm(X[rows, pred_positions])
        return X, mlm_Y_hat, self.nsp(X[:, 0, :])


def pretraining_loss(mlm_Y_hat, nsp_Y_hat, mlm_Y, mlm_weights, nsp_y):
    mlm_l = nn.functional.cross_entropy(mlm_Y_hat.reshape(-1, mlm_Y_hat.shape[-1]),
                                        mlm_Y.reshape(-1), reduction='none')
    mlm_l = (mlm_l * mlm_weights.reshape(-1)).sum() / (mlm_weights.sum() + 1e-8)
    return mlm_l + nn.functional.cross_entropy(nsp_Y_hat, nsp_y)
