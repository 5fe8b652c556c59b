# syntax=docker/dockerfile:1
# The cloud LLM stand-in (OpenAI-compatible) with the committed cloud checkpoint. Build from the repository root:
#   docker build -f docker/cloud-llm.Dockerfile -t floe-ts/cloud-llm .
# or `docker compose -f docker/compose.yml up cloud`.

# --- build: compile the workspace packages the stand-in needs and assemble a production tree ---
FROM node:20-bookworm-slim AS build
RUN npm install -g pnpm@10
WORKDIR /src
COPY package.json pnpm-lock.yaml pnpm-workspace.yaml .npmrc tsconfig.base.json ./
COPY packages packages
RUN pnpm install --frozen-lockfile --filter @floe/cloud-llm...
RUN pnpm exec tsc -b packages/cloud-llm
RUN pnpm --filter @floe/cloud-llm deploy --prod --legacy /out

# --- runtime: no sources, not root; onnxruntime-node's CPU build ships inside its package ---
FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    FLOE_CLOUD_HOST=0.0.0.0 \
    FLOE_CLOUD_PORT=8000 \
    FLOE_CLOUD_MODEL=/models/cloud
WORKDIR /app
COPY --from=build --chown=node:node /out ./
COPY --chown=node:node models/cloud /models/cloud
USER node
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.FLOE_CLOUD_PORT || 8000) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "dist/main.js"]
