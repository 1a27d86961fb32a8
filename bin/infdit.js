#!/usr/bin/env node
// Entry point: TypeScript sources run through tsx's loader (no build step).
import { register } from 'tsx/esm/api';
register();
await import('../server/cli.ts');
